"""Message classes for TF Serving configs that the tensorflow-serving-api package lacks.

tensorflow-serving-api ships `tensorflow_serving.config.model_server_config_pb2`
(models.config) but not the protos behind `--batching_parameters_file`
(`tensorflow.serving.BatchingParameters`, session_bundle_config.proto) or
`--monitoring_config_file` (`tensorflow.serving.MonitoringConfig`,
monitoring_config.proto). This module declares those two messages with the
field names, numbers and types of TF Serving's published .proto files, in a
private descriptor pool (so they never clash with a real copy), so that the
shipped config files can be parsed and checked here. Only the fields present
in TF Serving's proto as of 2.x are declared; a config using a newer field
fails to parse here, which is the safe direction.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2

_FIELD = descriptor_pb2.FieldDescriptorProto
_INT64_VALUE = ".google.protobuf.Int64Value"
_STRING_VALUE = ".google.protobuf.StringValue"

# (name, number, type, label, message type) as in TF Serving's .proto files.
_BATCHING_PARAMETERS = (
    ("max_batch_size", 1, _FIELD.TYPE_MESSAGE, _FIELD.LABEL_OPTIONAL, _INT64_VALUE),
    ("batch_timeout_micros", 2, _FIELD.TYPE_MESSAGE, _FIELD.LABEL_OPTIONAL, _INT64_VALUE),
    ("max_enqueued_batches", 3, _FIELD.TYPE_MESSAGE, _FIELD.LABEL_OPTIONAL, _INT64_VALUE),
    ("num_batch_threads", 4, _FIELD.TYPE_MESSAGE, _FIELD.LABEL_OPTIONAL, _INT64_VALUE),
    ("thread_pool_name", 5, _FIELD.TYPE_MESSAGE, _FIELD.LABEL_OPTIONAL, _STRING_VALUE),
    ("allowed_batch_sizes", 6, _FIELD.TYPE_INT64, _FIELD.LABEL_REPEATED, None),
    ("pad_variable_length_inputs", 7, _FIELD.TYPE_BOOL, _FIELD.LABEL_OPTIONAL, None),
)
_PROMETHEUS_CONFIG = (
    ("enable", 1, _FIELD.TYPE_BOOL, _FIELD.LABEL_OPTIONAL, None),
    ("path", 2, _FIELD.TYPE_STRING, _FIELD.LABEL_OPTIONAL, None),
)
_MONITORING_CONFIG = (
    ("prometheus_config", 1, _FIELD.TYPE_MESSAGE, _FIELD.LABEL_OPTIONAL,
     ".tensorflow.serving.PrometheusConfig"),
)


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="funnelstack/tf_serving_configs.proto", package="tensorflow.serving",
        syntax="proto3", dependency=[wrappers_pb2.DESCRIPTOR.name])
    for message_name, fields in (("BatchingParameters", _BATCHING_PARAMETERS),
                                 ("PrometheusConfig", _PROMETHEUS_CONFIG),
                                 ("MonitoringConfig", _MONITORING_CONFIG)):
        message = file.message_type.add(name=message_name)
        for name, number, kind, label, type_name in fields:
            field = message.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
    pool.AddSerializedFile(file.SerializeToString())
    return pool


_POOL = _build_pool()
BatchingParameters = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))
MonitoringConfig = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def parse_text(path: str, message_class):
    """Parses a text-format config file into `message_class`; errors name the file and line."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        return text_format.Parse(text, message_class())
    except text_format.ParseError as error:
        raise ValueError(f"{path}: {error}") from None
