-- Client ids and topics as long as MQTT allows (65,535 bytes; TEXT holds that many): with the
-- reference's VARCHAR(64) / VARCHAR(180), a message from a longer client id or on a longer topic
-- was refused (dead-lettered) and such a client's subscriptions were not stored. Collations stay
-- byte for byte (0004).
-- InnoDB keys hold at most 3072 bytes: the topic index keeps the first 768 characters, which the
-- replay's `topic like 'prefix%'` range reads (the exact match is done by the plugin). A key prefix
-- cannot make a long value unique, so the upserts' unique keys are on SHA-256 hashes of the full
-- values (stored generated columns; MariaDB allows no primary key on those).
ALTER TABLE mqtt_msg
  MODIFY topic TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  MODIFY sender TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL,
  DROP INDEX topic_index,
  ADD INDEX topic_index (topic(768));
ALTER TABLE mqtt_sub
  DROP PRIMARY KEY,
  MODIFY clientid TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  MODIFY topic TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  -- The client id's length first: ("ab", "c") and ("a", "bc") hash apart.
  ADD COLUMN subscription_hash BINARY(32)
    AS (UNHEX(SHA2(CONCAT(OCTET_LENGTH(clientid), ':', clientid, topic), 256))) STORED,
  ADD UNIQUE INDEX sub_unique (subscription_hash),
  ADD INDEX sub_clientid_index (clientid(768));
ALTER TABLE mqtt_delivered
  DROP PRIMARY KEY,
  MODIFY clientid TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  ADD COLUMN clientid_hash BINARY(32) AS (UNHEX(SHA2(clientid, 256))) STORED,
  ADD UNIQUE INDEX delivered_unique (clientid_hash, msgid),
  -- The replay's `not exists` check (message and client), and the foreign key's cascade.
  ADD INDEX delivered_lookup (msgid, clientid(700)),
  DROP INDEX delivered_msgid_index;
