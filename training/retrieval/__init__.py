"""streamrec training: retrieval."""
