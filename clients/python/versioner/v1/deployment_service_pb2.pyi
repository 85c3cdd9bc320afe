import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeploymentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_STATUS_UNSPECIFIED: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_PENDING: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_STARTED: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_COMPLETED: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_FAILED: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_ABORTED: _ClassVar[DeploymentStatus]

class EnvironmentType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENVIRONMENT_TYPE_UNSPECIFIED: _ClassVar[EnvironmentType]
    ENVIRONMENT_TYPE_PRODUCTION: _ClassVar[EnvironmentType]
    ENVIRONMENT_TYPE_STAGING: _ClassVar[EnvironmentType]
    ENVIRONMENT_TYPE_TEST: _ClassVar[EnvironmentType]
    ENVIRONMENT_TYPE_DEVELOPMENT: _ClassVar[EnvironmentType]
DEPLOYMENT_STATUS_UNSPECIFIED: DeploymentStatus
DEPLOYMENT_STATUS_PENDING: DeploymentStatus
DEPLOYMENT_STATUS_STARTED: DeploymentStatus
DEPLOYMENT_STATUS_COMPLETED: DeploymentStatus
DEPLOYMENT_STATUS_FAILED: DeploymentStatus
DEPLOYMENT_STATUS_ABORTED: DeploymentStatus
ENVIRONMENT_TYPE_UNSPECIFIED: EnvironmentType
ENVIRONMENT_TYPE_PRODUCTION: EnvironmentType
ENVIRONMENT_TYPE_STAGING: EnvironmentType
ENVIRONMENT_TYPE_TEST: EnvironmentType
ENVIRONMENT_TYPE_DEVELOPMENT: EnvironmentType

class Deployment(_message.Message):
    __slots__ = ("id", "product_name", "version", "environment_name", "environment_type", "status", "deployed_by", "scm_branch", "scm_sha", "build_url", "extra_metadata", "create_time", "start_time", "end_time", "update_time", "duration", "previous_version", "is_rollback", "scm_commit_time", "approval_id", "override_reason", "rule_violations")
    ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_BY_FIELD_NUMBER: _ClassVar[int]
    SCM_BRANCH_FIELD_NUMBER: _ClassVar[int]
    SCM_SHA_FIELD_NUMBER: _ClassVar[int]
    BUILD_URL_FIELD_NUMBER: _ClassVar[int]
    EXTRA_METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    IS_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    SCM_COMMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_REASON_FIELD_NUMBER: _ClassVar[int]
    RULE_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    product_name: str
    version: str
    environment_name: str
    environment_type: EnvironmentType
    status: DeploymentStatus
    deployed_by: str
    scm_branch: str
    scm_sha: str
    build_url: str
    extra_metadata: _struct_pb2.Struct
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    previous_version: str
    is_rollback: bool
    scm_commit_time: _timestamp_pb2.Timestamp
    approval_id: str
    override_reason: str
    rule_violations: _containers.RepeatedCompositeFieldContainer[RuleViolation]
    def __init__(self, id: _Optional[str] = ..., product_name: _Optional[str] = ..., version: _Optional[str] = ..., environment_name: _Optional[str] = ..., environment_type: _Optional[_Union[EnvironmentType, str]] = ..., status: _Optional[_Union[DeploymentStatus, str]] = ..., deployed_by: _Optional[str] = ..., scm_branch: _Optional[str] = ..., scm_sha: _Optional[str] = ..., build_url: _Optional[str] = ..., extra_metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., previous_version: _Optional[str] = ..., is_rollback: _Optional[bool] = ..., scm_commit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., approval_id: _Optional[str] = ..., override_reason: _Optional[str] = ..., rule_violations: _Optional[_Iterable[_Union[RuleViolation, _Mapping]]] = ...) -> None: ...

class RuleViolation(_message.Message):
    __slots__ = ("rule_name", "kind", "reason", "message")
    RULE_NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    rule_name: str
    kind: str
    reason: str
    message: str
    def __init__(self, rule_name: _Optional[str] = ..., kind: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("revision", "event_id", "status", "event_time", "record_time", "deployment", "recorded_by")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    RECORD_TIME_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    RECORDED_BY_FIELD_NUMBER: _ClassVar[int]
    revision: int
    event_id: str
    status: DeploymentStatus
    event_time: _timestamp_pb2.Timestamp
    record_time: _timestamp_pb2.Timestamp
    deployment: Deployment
    recorded_by: str
    def __init__(self, revision: _Optional[int] = ..., event_id: _Optional[str] = ..., status: _Optional[_Union[DeploymentStatus, str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., record_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deployment: _Optional[_Union[Deployment, _Mapping]] = ..., recorded_by: _Optional[str] = ...) -> None: ...

class RecordEventRequest(_message.Message):
    __slots__ = ("product_name", "version", "environment_name", "status", "deployed_by", "scm_branch", "scm_sha", "build_url", "extra_metadata", "event_time", "event_id", "deployment_id", "scm_commit_time", "override_reason")
    PRODUCT_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_BY_FIELD_NUMBER: _ClassVar[int]
    SCM_BRANCH_FIELD_NUMBER: _ClassVar[int]
    SCM_SHA_FIELD_NUMBER: _ClassVar[int]
    BUILD_URL_FIELD_NUMBER: _ClassVar[int]
    EXTRA_METADATA_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCM_COMMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_REASON_FIELD_NUMBER: _ClassVar[int]
    product_name: str
    version: str
    environment_name: str
    status: DeploymentStatus
    deployed_by: str
    scm_branch: str
    scm_sha: str
    build_url: str
    extra_metadata: _struct_pb2.Struct
    event_time: _timestamp_pb2.Timestamp
    event_id: str
    deployment_id: str
    scm_commit_time: _timestamp_pb2.Timestamp
    override_reason: str
    def __init__(self, product_name: _Optional[str] = ..., version: _Optional[str] = ..., environment_name: _Optional[str] = ..., status: _Optional[_Union[DeploymentStatus, str]] = ..., deployed_by: _Optional[str] = ..., scm_branch: _Optional[str] = ..., scm_sha: _Optional[str] = ..., build_url: _Optional[str] = ..., extra_metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., scm_commit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., override_reason: _Optional[str] = ...) -> None: ...

class RecordEventResponse(_message.Message):
    __slots__ = ("event", "duplicate")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    event: Event
    duplicate: bool
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class GetCurrentRequest(_message.Message):
    __slots__ = ("product_name", "environment_name")
    PRODUCT_NAME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    product_name: str
    environment_name: str
    def __init__(self, product_name: _Optional[str] = ..., environment_name: _Optional[str] = ...) -> None: ...

class EnvironmentState(_message.Message):
    __slots__ = ("product_name", "environment_name", "environment_type", "current", "latest")
    PRODUCT_NAME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    product_name: str
    environment_name: str
    environment_type: EnvironmentType
    current: Deployment
    latest: Deployment
    def __init__(self, product_name: _Optional[str] = ..., environment_name: _Optional[str] = ..., environment_type: _Optional[_Union[EnvironmentType, str]] = ..., current: _Optional[_Union[Deployment, _Mapping]] = ..., latest: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class GetCurrentResponse(_message.Message):
    __slots__ = ("states", "revision")
    STATES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedCompositeFieldContainer[EnvironmentState]
    revision: int
    def __init__(self, states: _Optional[_Iterable[_Union[EnvironmentState, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListHistoryRequest(_message.Message):
    __slots__ = ("product_name", "environment_name", "statuses", "version", "deployed_by", "since", "until", "page_size", "page_token")
    PRODUCT_NAME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_BY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    product_name: str
    environment_name: str
    statuses: _containers.RepeatedScalarFieldContainer[DeploymentStatus]
    version: str
    deployed_by: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, product_name: _Optional[str] = ..., environment_name: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[DeploymentStatus, str]]] = ..., version: _Optional[str] = ..., deployed_by: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHistoryResponse(_message.Message):
    __slots__ = ("deployments", "next_page_token", "revision")
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    next_page_token: str
    revision: int
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class WatchDeploymentsRequest(_message.Message):
    __slots__ = ("product_name", "environment_name", "statuses", "after_revision", "max_events_per_message")
    PRODUCT_NAME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    AFTER_REVISION_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    product_name: str
    environment_name: str
    statuses: _containers.RepeatedScalarFieldContainer[DeploymentStatus]
    after_revision: int
    max_events_per_message: int
    def __init__(self, product_name: _Optional[str] = ..., environment_name: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[DeploymentStatus, str]]] = ..., after_revision: _Optional[int] = ..., max_events_per_message: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchDeploymentsResponse(_message.Message):
    __slots__ = ("revision", "event", "progress", "events")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    event: Event
    progress: Progress
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, revision: _Optional[int] = ..., event: _Optional[_Union[Event, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...
