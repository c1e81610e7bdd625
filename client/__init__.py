"""embedsense client SDK: talks to the server over gRPC; needs neither torch nor faiss."""
