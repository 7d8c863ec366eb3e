"""The online user history of the serving layer, by job: where a Delta snapshot ends on the topic
(``snapshot``), the thread that tails the topic from there (``tail``) and the per-user store that
requests read (``store``)."""
