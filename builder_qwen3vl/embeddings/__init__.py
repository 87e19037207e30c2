"""embeddings.onnx: the token table and the image features placed on the (1 + D) * H wide stream."""
