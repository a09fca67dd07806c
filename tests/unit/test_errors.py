import pickle

import grpc
import pytest
from gemma_serving import errors

TABLE = [
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (errors.RequestTooLarge, grpc.StatusCode.INVALID_ARGUMENT, 413),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, 401),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, 403),
    (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND, 404),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, 409),
    (errors.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (errors.NotReady, grpc.StatusCode.UNAVAILABLE, 503),
    (errors.EngineDead, grpc.StatusCode.UNAVAILABLE, 503),
    (errors.ReplicaGone, grpc.StatusCode.UNAVAILABLE, 503),
    (errors.CallRefused, grpc.StatusCode.UNAVAILABLE, 503),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (errors.UnsupportedModality, grpc.StatusCode.UNIMPLEMENTED, 501),
    (errors.PolicyViolation, grpc.StatusCode.FAILED_PRECONDITION, 400),
    (errors.ClientCancelled, grpc.StatusCode.CANCELLED, 499),
    (errors.InternalError, grpc.StatusCode.INTERNAL, 500),
]


@pytest.mark.parametrize("cls,code,http", TABLE)
def test_error_maps_to_grpc_and_http(cls, code, http):
    exc = cls("what was wrong")
    assert grpc.StatusCode[exc.grpc_code] is code
    assert exc.http_status == http
    assert isinstance(exc, errors.GemmaServingError)


def test_every_error_class_is_in_the_table():
    declared = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.GemmaServingError)}
    assert declared - {errors.GemmaServingError} == {row[0] for row in TABLE}


@pytest.mark.parametrize("cls", [row[0] for row in TABLE])
def test_errors_survive_pickling_across_processes(cls):
    copy = pickle.loads(pickle.dumps(cls("msg", field="a.b", retry_after_s=1.5)))
    assert type(copy) is cls and (copy.message, copy.field, copy.retry_after_s) == ("msg", "a.b", 1.5)


def test_an_error_sent_by_name_becomes_its_class_again():
    assert errors.named("CallRefused") is errors.CallRefused
    assert errors.named("NoSuchError") is errors.InternalError  # a class a newer version added
