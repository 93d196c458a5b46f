-- Where a turn's recorded audio is described (formats and sizes), for keys with record_audio; NULL otherwise.
ALTER TABLE realtime_turns ADD COLUMN audio {json};
