-- The reference plugin's default tables (EMQX offline-messages), so that existing queries keep working.
CREATE TABLE IF NOT EXISTS mqtt_msg (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  msgid VARCHAR(64) DEFAULT NULL,
  topic VARCHAR(180) NOT NULL,
  sender VARCHAR(64) DEFAULT NULL,
  qos TINYINT NOT NULL DEFAULT 0,
  retain TINYINT DEFAULT NULL,
  payload BLOB,
  arrived DATETIME NOT NULL,
  PRIMARY KEY (id),
  INDEX topic_index (topic)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS mqtt_sub (
  clientid VARCHAR(64) NOT NULL,
  topic VARCHAR(180) NOT NULL,
  qos TINYINT DEFAULT 0,
  PRIMARY KEY (clientid, topic)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
