"""The bundle as a contract and as files: ``contract.py`` (file names, og's input/output names, model type,
the tokenizer files: what the writers and ``verify`` share), ``genai_config.py`` (genai_config.json and the
processor configs), ``templates.py`` (the JSON templates), ``output_folder.py`` / ``permissions.py`` /
``disk_estimate.py`` (where and how the files land)."""
