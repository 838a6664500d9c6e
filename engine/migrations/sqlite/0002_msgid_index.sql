-- Acks delete by msgid; without an index every delete scans the table (the reference has none).
CREATE INDEX IF NOT EXISTS msgid_index ON mqtt_msg (msgid);
