"""SLO and policy definitions: the model both formats produce (``model``), slostream's own YAML and
the loading of a file (``native``), and the OpenSLO v1 subset (``openslo``)."""
