"""What runs the denoiser for a stream: the Runtime interface (numpy in and out), torch and ONNX Runtime."""
