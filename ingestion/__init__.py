"""streamrec ingestion."""
