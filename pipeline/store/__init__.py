"""The store: every table, and all the SQL the rest of pipeline runs (claims, batches, recovery, blobs)."""
