"""The model and everything it needs, free of any runtime: config, codec, denoiser, samplers, conditioning, metrics."""
