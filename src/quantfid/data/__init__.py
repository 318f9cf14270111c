"""Data: the built-in corpora (quantfid.data.corpus), the organism's seeded task generators (quantfid.data.tasks),
its tokenizer training (quantfid.data.tokenizer) and its shipped checkpoint (``data/organism/``). Above the vocabulary
layer only; every stage may read it."""
