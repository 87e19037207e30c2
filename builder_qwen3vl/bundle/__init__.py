"""The bundle's files as a build writes them: genai_config.json and the processor configs, the output folder, the disk estimate."""
