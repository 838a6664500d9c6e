-- The reference plugin's default tables in SQLite's dialect; `arrived` holds unix milliseconds.
CREATE TABLE IF NOT EXISTS mqtt_msg (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  msgid TEXT,
  topic TEXT NOT NULL,
  sender TEXT,
  qos INTEGER NOT NULL DEFAULT 0,
  retain INTEGER,
  payload BLOB,
  arrived INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS topic_index ON mqtt_msg (topic);

CREATE TABLE IF NOT EXISTS mqtt_sub (
  clientid TEXT NOT NULL,
  topic TEXT NOT NULL,
  qos INTEGER DEFAULT 0,
  PRIMARY KEY (clientid, topic)
);
