"""The image generation service: Stable Diffusion class models over gRPC (issue 4, docs/image.md)."""
