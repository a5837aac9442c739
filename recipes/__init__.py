"""The packaged recipes (YAML files): ``lightning-lottery recipes`` lists them, ``--config NAME`` runs one by name."""
