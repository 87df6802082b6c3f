"""Every gRPC call of the CLI: a deadline on each, the operator token, TLS when given a CA,
errors as CliError."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import grpc
from delivery.v1 import address_service_pb2 as adpb
from delivery.v1 import address_service_pb2_grpc as adpb_grpc
from delivery.v1 import admin_service_pb2 as apb
from delivery.v1 import admin_service_pb2_grpc as apb_grpc
from delivery.v1 import delivery_service_pb2 as pb
from delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from mta.v1 import mta_service_pb2 as mta
from mta.v1 import mta_service_pb2_grpc as mta_grpc

from campaign_cli.errors import CliError
from grpc_common import serving
from grpc_common.settings import target_is_loopback

# Answers as large as the service sends (a delivery with a 1 MiB body is 4 MiB and more),
# and keepalive as the service's policy allows.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", serving.MAX_SEND_BYTES),
    *serving.CLIENT_KEEPALIVE_OPTIONS,
]


def credentials(
    address: str, ca: str | None, cert: str | None, key: str | None, insecure: bool
) -> grpc.ChannelCredentials | None:
    """TLS to `address` with the CA bundle `ca` (and a client certificate for mutual TLS);
    None for plaintext, which only a loopback address or `insecure` allows: a token must
    not cross a network in clear by accident."""
    if bool(cert) != bool(key):
        raise CliError(None, "--tls-cert and --tls-key go together")
    if ca:
        try:
            return serving.channel_credentials(ca, cert or "", key or "")
        except OSError as exc:
            raise CliError(None, str(exc)) from None
    if cert:
        raise CliError(None, "--tls-cert needs --tls-ca, the CA that signed the service's")
    if not insecure and not target_is_loopback(address):
        raise CliError(
            None,
            f"{address} is beyond this machine: give --tls-ca (the CA that signed the "
            "service's certificate), or --insecure to send your token in plaintext",
        )
    return None


class Client:
    """The delivery service at `address`, over TLS with `credentials` (see credentials())
    or else in plaintext; use as a context manager to close the channel."""

    def __init__(
        self,
        address: str,
        token: str | None,
        timeout: float,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._token = token
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._channel = (
            grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
            if credentials is None
            else grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
        )
        self._stub = pb_grpc.DeliveryServiceStub(self._channel)
        self._admin = apb_grpc.AdminServiceStub(self._channel)
        self._addresses = adpb_grpc.AddressServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _error(self, err: Any) -> CliError:
        code: grpc.StatusCode = err.code()
        details: str = err.details() or ""
        # A status made by the client library carries no trailing metadata; the service's
        # own UNAVAILABLE (its database is down) does, and keeps its message.
        if code == grpc.StatusCode.UNAVAILABLE and not err.trailing_metadata():
            return CliError(code.name, f"cannot reach the delivery service at {self.address}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return CliError(
                code.name,
                f"no answer from the delivery service at {self.address} "
                f"within {self.timeout:g} s (--timeout)",
            )
        if code == grpc.StatusCode.UNAUTHENTICATED and not self._token:
            details += " (pass --token or set CAMPAIGN_TOKEN)"
        return CliError(code.name, details)

    def create_delivery(self, request: pb.CreateDeliveryRequest) -> pb.CreateDeliveryResponse:
        response: pb.CreateDeliveryResponse = self._call(self._stub.CreateDelivery, request)
        return response

    def add_recipients(
        self, delivery_id: int, position: int, recipients: list[pb.Recipient]
    ) -> pb.AddRecipientsResponse:
        response: pb.AddRecipientsResponse = self._call(
            self._stub.AddRecipients,
            pb.AddRecipientsRequest(
                delivery_id=delivery_id,
                position=position,
                recipients=pb.RecipientList(recipients=recipients),
            ),
        )
        return response

    def prepare(self, delivery_id: int) -> pb.PrepareDeliveryResponse:
        response: pb.PrepareDeliveryResponse = self._call(
            self._stub.PrepareDelivery, pb.PrepareDeliveryRequest(delivery_id=delivery_id)
        )
        return response

    def approve(
        self, delivery_id: int, step: pb.ApprovalStep.ValueType
    ) -> pb.ApproveDeliveryResponse:
        response: pb.ApproveDeliveryResponse = self._call(
            self._stub.ApproveDelivery,
            pb.ApproveDeliveryRequest(delivery_id=delivery_id, step=step),
        )
        return response

    def confirm(self, delivery_id: int) -> pb.ConfirmSendResponse:
        response: pb.ConfirmSendResponse = self._call(
            self._stub.ConfirmSend, pb.ConfirmSendRequest(delivery_id=delivery_id)
        )
        return response

    def stop(self, delivery_id: int) -> pb.StopDeliveryResponse:
        response: pb.StopDeliveryResponse = self._call(
            self._stub.StopDelivery, pb.StopDeliveryRequest(delivery_id=delivery_id)
        )
        return response

    def get(self, delivery_id: int) -> pb.GetDeliveryResponse:
        response: pb.GetDeliveryResponse = self._call(
            self._stub.GetDelivery, pb.GetDeliveryRequest(delivery_id=delivery_id)
        )
        return response

    def list_deliveries(self, request: pb.ListDeliveriesRequest) -> pb.ListDeliveriesResponse:
        response: pb.ListDeliveriesResponse = self._call(self._stub.ListDeliveries, request)
        return response

    def _reopened(self, method: Any, request: Any, moved: Callable[[Any], None]) -> Iterator[Any]:
        """A server stream's messages, with no deadline, until it ends. One that ends
        UNAVAILABLE after a message (its connection reached the service's maximum age, or
        the service restarted) is opened again with `request`, which `moved` updates from
        each message; one that fails before any message is an error."""
        while True:
            call = method(request, metadata=self._metadata)
            received = False
            try:
                for message in call:
                    received = True
                    moved(message)
                    yield message
                return
            except grpc.RpcError as err:
                if not (received and err.code() == grpc.StatusCode.UNAVAILABLE):
                    raise self._error(err) from None
            finally:
                # Ctrl-C or an early exit must not leave the stream open on the server.
                call.cancel()

    def watch(self, delivery_id: int) -> Iterator[pb.WatchDeploymentResponse]:
        """The deployment's updates until FINISHED or STOPPED (a deployment lasts as long
        as its validity period); the same request again after a break."""
        request = pb.WatchDeploymentRequest(delivery_id=delivery_id)
        yield from self._reopened(self._stub.WatchDeployment, request, lambda update: None)

    def kpis(self, delivery_id: int) -> pb.GetKpisResponse:
        response: pb.GetKpisResponse = self._call(
            self._stub.GetKpis, pb.GetKpisRequest(delivery_id=delivery_id)
        )
        return response

    def compute_stats(self, delivery_id: int) -> pb.ComputeStatsResponse:
        response: pb.ComputeStatsResponse = self._call(
            self._stub.ComputeStats, pb.ComputeStatsRequest(delivery_id=delivery_id)
        )
        return response

    def sending_logs(self, request: pb.ListSendingLogsRequest) -> pb.ListSendingLogsResponse:
        response: pb.ListSendingLogsResponse = self._call(self._stub.ListSendingLogs, request)
        return response

    def history(self, request: pb.GetProfileHistoryRequest) -> pb.GetProfileHistoryResponse:
        response: pb.GetProfileHistoryResponse = self._call(self._stub.GetProfileHistory, request)
        return response

    def list_alerts(self, request: pb.ListAlertsRequest) -> pb.ListAlertsResponse:
        response: pb.ListAlertsResponse = self._call(self._stub.ListAlerts, request)
        return response

    def delivery_events(
        self, request: pb.ListDeliveryEventsRequest
    ) -> pb.ListDeliveryEventsResponse:
        response: pb.ListDeliveryEventsResponse = self._call(self._stub.ListDeliveryEvents, request)
        return response

    def watch_delivery_events(
        self, request: pb.WatchDeliveryEventsRequest
    ) -> Iterator[pb.WatchDeliveryEventsResponse]:
        """The feed's messages as they come, until the caller stops; after a break, the
        stream again after the last cursor it gave: nothing skipped, nothing twice."""
        resume = pb.WatchDeliveryEventsRequest()
        resume.CopyFrom(request)

        def moved(message: pb.WatchDeliveryEventsResponse) -> None:
            resume.after, resume.from_end = message.cursor, False

        yield from self._reopened(self._stub.WatchDeliveryEvents, resume, moved)

    def message_timeline(self, delivery_id: int, message_id: int) -> pb.GetMessageTimelineResponse:
        response: pb.GetMessageTimelineResponse = self._call(
            self._stub.GetMessageTimeline,
            pb.GetMessageTimelineRequest(delivery_id=delivery_id, message_id=message_id),
        )
        return response

    def upsert_profiles(self, profiles: list[pb.Profile]) -> pb.UpsertProfilesResponse:
        response: pb.UpsertProfilesResponse = self._call(
            self._stub.UpsertProfiles, pb.UpsertProfilesRequest(profiles=profiles)
        )
        return response

    def pause_recurring(self, recurring_id: int) -> pb.PauseRecurringDeliveryResponse:
        response: pb.PauseRecurringDeliveryResponse = self._call(
            self._stub.PauseRecurringDelivery,
            pb.PauseRecurringDeliveryRequest(recurring_delivery_id=recurring_id),
        )
        return response

    def resume_recurring(self, recurring_id: int) -> pb.ResumeRecurringDeliveryResponse:
        response: pb.ResumeRecurringDeliveryResponse = self._call(
            self._stub.ResumeRecurringDelivery,
            pb.ResumeRecurringDeliveryRequest(recurring_delivery_id=recurring_id),
        )
        return response

    def cancel_recurring(self, recurring_id: int) -> pb.CancelRecurringDeliveryResponse:
        response: pb.CancelRecurringDeliveryResponse = self._call(
            self._stub.CancelRecurringDelivery,
            pb.CancelRecurringDeliveryRequest(recurring_delivery_id=recurring_id),
        )
        return response

    def get_recurring(self, recurring_id: int) -> pb.GetRecurringDeliveryResponse:
        response: pb.GetRecurringDeliveryResponse = self._call(
            self._stub.GetRecurringDelivery,
            pb.GetRecurringDeliveryRequest(recurring_delivery_id=recurring_id),
        )
        return response

    # AdminService (role admin), on the same channel.

    def create_operator(self, request: apb.CreateOperatorRequest) -> apb.CreateOperatorResponse:
        response: apb.CreateOperatorResponse = self._call(self._admin.CreateOperator, request)
        return response

    def list_operators(self, request: apb.ListOperatorsRequest) -> apb.ListOperatorsResponse:
        response: apb.ListOperatorsResponse = self._call(self._admin.ListOperators, request)
        return response

    def revoke_operator(self, name: str) -> apb.RevokeOperatorResponse:
        response: apb.RevokeOperatorResponse = self._call(
            self._admin.RevokeOperator, apb.RevokeOperatorRequest(name=name)
        )
        return response

    def rotate_operator_token(self, name: str) -> apb.RotateOperatorTokenResponse:
        response: apb.RotateOperatorTokenResponse = self._call(
            self._admin.RotateOperatorToken, apb.RotateOperatorTokenRequest(name=name)
        )
        return response

    def audit_events(self, request: apb.ListAuditEventsRequest) -> apb.ListAuditEventsResponse:
        response: apb.ListAuditEventsResponse = self._call(self._admin.ListAuditEvents, request)
        return response

    # AddressService (read_deliveries to read, manage_profiles to change), on the same channel.

    def list_addresses(self, request: adpb.ListAddressesRequest) -> adpb.ListAddressesResponse:
        response: adpb.ListAddressesResponse = self._call(self._addresses.ListAddresses, request)
        return response

    def get_address(self, address: str) -> adpb.GetAddressResponse:
        response: adpb.GetAddressResponse = self._call(
            self._addresses.GetAddress, adpb.GetAddressRequest(address=address)
        )
        return response

    def set_address_status(
        self, address: str, status: adpb.AddressStatus.ValueType
    ) -> adpb.SetAddressStatusResponse:
        response: adpb.SetAddressStatusResponse = self._call(
            self._addresses.SetAddressStatus,
            adpb.SetAddressStatusRequest(address=address, status=status),
        )
        return response

    def release_addresses(
        self, request: adpb.ReleaseAddressesRequest
    ) -> adpb.ReleaseAddressesResponse:
        response: adpb.ReleaseAddressesResponse = self._call(
            self._addresses.ReleaseAddresses, request
        )
        return response


def set_mta_scenario(address: str, request: mta.SetScenarioRequest, timeout: float) -> None:
    """Sets the MTA stub's fates (its control RPC; only the demo uses it)."""
    with grpc.insecure_channel(address) as channel:
        try:
            mta_grpc.MtaServiceStub(channel).SetScenario(request, timeout=timeout)
        except grpc.RpcError as err:
            code: grpc.StatusCode = err.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise CliError(code.name, f"cannot reach the MTA stub at {address}") from None
            raise CliError(code.name, err.details() or "") from None
