from versioner.v1 import deployment_service_pb2 as pb


def test_record_started_then_completed_is_one_completed_deployment(stub):
    common = dict(product_name="my-service", version="1.2.3", environment_name="production")
    first = stub.RecordEvent(pb.RecordEventRequest(**common, status=pb.DEPLOYMENT_STATUS_STARTED))
    second = stub.RecordEvent(
        pb.RecordEventRequest(**common, status=pb.DEPLOYMENT_STATUS_COMPLETED)
    )
    assert first.event.deployment.id == second.event.deployment.id
    assert second.event.deployment.status == pb.DEPLOYMENT_STATUS_COMPLETED
    assert second.event.revision == first.event.revision + 1
