-- Topics, client ids and message ids compare byte for byte, as MQTT and the broker do: with the
-- server's default case-insensitive collation `a/B` and `a/b` (or clients `Dev1` and `dev1`) were
-- one row of mqtt_sub, a QoS 0 delivery record of one client hid rows from another, the per-topic
-- cap counted two topics as one, and two base62 message ids differing in case collided.
-- (utf8mb4_bin still ignores trailing spaces in comparisons, on MariaDB and MySQL 5.7 alike.)
-- The foreign key from mqtt_delivered goes while both msgid columns change, then comes back.
ALTER TABLE mqtt_delivered DROP FOREIGN KEY delivered_message;
ALTER TABLE mqtt_msg
  MODIFY msgid VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin DEFAULT NULL,
  MODIFY topic VARCHAR(180) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  MODIFY sender VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL;
ALTER TABLE mqtt_sub
  MODIFY clientid VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  MODIFY topic VARCHAR(180) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE mqtt_delivered
  MODIFY clientid VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  MODIFY msgid VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  ADD CONSTRAINT delivered_message FOREIGN KEY (msgid) REFERENCES mqtt_msg (msgid) ON DELETE CASCADE;
