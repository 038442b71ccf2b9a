"""Checks of a request's inputs against a signature, before any model code runs.

Whatever is wrong with a request is answered INVALID_ARGUMENT here, with a
message that names the input, so that an error raised later, inside the model
or the server, is the server's fault (INTERNAL) and never the caller's. The
checks, in order:

  - input names: every input of the signature, no other (TF Serving's message);
  - dtype: the TensorProto's dtype is the signature input's dtype;
  - shape: the rank and each known dimension fit the signature's shape;
  - rows: at least one, and at most the server's maximum batch size
    (`--max-batch-size`, 10,000 by default), checked on the declared shape
    before the tensor is decoded, so an oversized request costs nothing;
  - the TensorProto decodes (its tensor_content has the size its shape says).

Classify and Regress inputs (tf.Examples) get the same row limits; their
example bytes are parsed by the signature's own graph, whose parse error
TensorFlow raises as InvalidArgumentError.
"""

from __future__ import annotations

import grpc
import tensorflow as tf

DEFAULT_MAX_BATCH_SIZE = 10_000


class RequestError(Exception):
    """An error to return with a gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code

    @property
    def error_code(self) -> int:
        """The status code as a number (tensorflow.error.Code uses gRPC's numbers)."""
        return self.code.value[0]


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def check_input_names(expected, given) -> None:
    """The request names every input of the signature and no other (TF Serving's messages)."""
    expected, given = set(expected), set(given)
    if given == expected:
        return
    unknown = sorted(given - expected)
    detail = (f"input tensor alias not found in signature: {', '.join(unknown)}." if unknown
              else f"input size does not match signature: {len(given)}!={len(expected)}.")
    raise invalid(f"{detail} Inputs expected to be in the set {{{','.join(sorted(expected))}}}.")


def check_rows(rows: int, max_batch_size: int, what: str = "the input") -> None:
    """At least one row ("Input is empty.", TF Serving's message for Classify and Regress),
    and no more than the server's maximum batch size."""
    if rows == 0:
        raise invalid("Input is empty." if what == "the input" else
                      f"Input is empty: {what} has no rows.")
    if rows > max_batch_size:
        raise invalid(f"{what} has {rows} rows, more than the maximum batch size "
                      f"{max_batch_size} (the server's --max-batch-size)")


def _shape_text(dims) -> str:
    return "[" + ",".join("?" if d < 0 else str(d) for d in dims) + "]"


def _check_dtype_and_shape(key: str, proto, info) -> None:
    """A TensorProto's dtype and shape against the signature's TensorInfo."""
    if proto.dtype != info.dtype:
        raise invalid(f"input '{key}' has dtype {tf.as_dtype(proto.dtype).name}, but the "
                      f"signature expects {tf.as_dtype(info.dtype).name}")
    if info.tensor_shape.unknown_rank:
        return
    given = [d.size for d in proto.tensor_shape.dim]
    wanted = [d.size for d in info.tensor_shape.dim]
    if len(given) != len(wanted) or any(w >= 0 and g != w for g, w in zip(given, wanted)):
        raise invalid(f"input '{key}' has shape {_shape_text(given)}, which does not fit the "
                      f"signature's shape {_shape_text(wanted)}")


def decode_input(key: str, proto, info, max_batch_size: int) -> tf.Tensor:
    """One Predict input, checked against the signature's TensorInfo, as a tensor."""
    _check_dtype_and_shape(key, proto, info)
    if proto.tensor_shape.dim:
        check_rows(proto.tensor_shape.dim[0].size, max_batch_size, f"input '{key}'")
    try:
        return tf.constant(tf.make_ndarray(proto))
    except Exception as error:   # only the request's bytes are involved here
        raise invalid(f"input '{key}' is not a valid TensorProto: {error}") from None


def serialized_examples(request_input, max_batch_size: int) -> list[bytes]:
    """tf.Examples of a Classify/Regress `Input`; a context is merged into every example."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = request_input.example_list.examples
    elif kind == "example_list_with_context":
        examples = request_input.example_list_with_context.examples
    else:
        examples = []
    check_rows(len(examples), max_batch_size)
    if kind == "example_list":
        return [e.SerializeToString() for e in examples]
    merged = []
    for example in examples:
        combined = tf.train.Example()
        combined.CopyFrom(request_input.example_list_with_context.context)
        combined.MergeFrom(example)
        merged.append(combined.SerializeToString())
    return merged
