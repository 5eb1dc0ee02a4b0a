-- How often each object was served from storage (cache hits and downloads
-- of uploads), for the management API. Counted in memory and added here in
-- batches.
ALTER TABLE objects ADD COLUMN hits INTEGER NOT NULL DEFAULT 0;
