"""streamrec training: common/ (shared), retrieval/ (HSTU, SASRec) and ranking/ (multi-task rankers)."""
