"""streamrec infra."""
