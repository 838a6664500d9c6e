-- Expiry, MQTT 5 properties, one row per message id, and who has had which message. (SQLite's
-- `payload BLOB` and `arrived` in unix milliseconds already keep everything.)
-- When the message expires, unix milliseconds; NULL: never.
ALTER TABLE mqtt_msg ADD COLUMN expiry INTEGER;
-- MQTT 5 properties as a JSON object; NULL when the message has none.
ALTER TABLE mqtt_msg ADD COLUMN properties TEXT;
CREATE INDEX IF NOT EXISTS expiry_index ON mqtt_msg (expiry);
DROP INDEX IF EXISTS msgid_index;
CREATE UNIQUE INDEX IF NOT EXISTS msgid_unique ON mqtt_msg (msgid);

-- A client that has had a message it must not get again: an ack in `fanout` mode, a QoS 0
-- delivery in either mode. Rows go with their message.
CREATE TABLE IF NOT EXISTS mqtt_delivered (
  clientid TEXT NOT NULL,
  msgid TEXT NOT NULL REFERENCES mqtt_msg (msgid) ON DELETE CASCADE,
  PRIMARY KEY (clientid, msgid)
);
CREATE INDEX IF NOT EXISTS delivered_msgid_index ON mqtt_delivered (msgid);
