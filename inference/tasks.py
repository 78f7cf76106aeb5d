import logging

from celery import shared_task

from inference import prediction_log

logger = logging.getLogger(__name__)


@shared_task(name="inference.prune_prediction_log", ignore_result=True)
def prune_prediction_log() -> int:
    deleted = prediction_log.prune()
    logger.info("pruned %d prediction log rows", deleted)
    return deleted
