"""The gRPC face of the delivery service: `servicer` (DeliveryService), `admin`
(AdminService) and `addresses` (AddressService) check each request (validation.py), call
a use case and map the answer (`convert`); `errors` turns the service's exceptions into
gRPC statuses with their details."""

from delivery_service.api.addresses import AddressServicer
from delivery_service.api.servicer import DeliveryServicer

__all__ = ["AddressServicer", "DeliveryServicer"]
