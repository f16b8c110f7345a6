from .registry import create_encoder, list_encoders, register_encoder

__all__ = ["create_encoder", "list_encoders", "register_encoder"]
