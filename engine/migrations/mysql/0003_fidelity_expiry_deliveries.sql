-- Payloads up to MQTT's maximum (256 MiB; `blob` stops at 64 KiB), publish time in milliseconds,
-- expiry, MQTT 5 properties, one row per message id, and who has had which message.
ALTER TABLE mqtt_msg
  MODIFY payload LONGBLOB,
  MODIFY arrived DATETIME(3) NOT NULL,
  -- When the message expires, unix milliseconds (message_ttl or the MQTT 5 Message Expiry
  -- Interval, whichever comes first); NULL: never.
  ADD COLUMN expiry BIGINT DEFAULT NULL,
  -- MQTT 5 properties as a JSON object; NULL when the message has none.
  ADD COLUMN properties MEDIUMTEXT DEFAULT NULL,
  ADD INDEX expiry_index (expiry),
  DROP INDEX msgid_index,
  ADD UNIQUE INDEX msgid_unique (msgid);

-- A client that has had a message it must not get again: an ack in `fanout` mode, a QoS 0
-- delivery in either mode. Rows go with their message.
CREATE TABLE IF NOT EXISTS mqtt_delivered (
  clientid VARCHAR(64) NOT NULL,
  msgid VARCHAR(64) NOT NULL,
  PRIMARY KEY (clientid, msgid),
  INDEX delivered_msgid_index (msgid),
  CONSTRAINT delivered_message FOREIGN KEY (msgid) REFERENCES mqtt_msg (msgid) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
