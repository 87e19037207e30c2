"""The ground floor every folder stands on: the facts and helpers the layers share; it imports nothing else of ours."""
