"""The gRPC face of the delivery service: `servicer` checks each request (validation.py),
calls a use case and maps the answer (`convert`); `errors` turns the service's
exceptions into gRPC statuses with their details."""

from delivery_service.api.servicer import DeliveryServicer

__all__ = ["DeliveryServicer"]
