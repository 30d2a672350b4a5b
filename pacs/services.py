"""The Services container: built once from Settings, handed to HTTP routes and DIMSE handlers."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from pacs.audit.trail import AuditTrail
from pacs.config import Settings
from pacs.index.accounts import AccountRepository
from pacs.index.audit import AuditRepository
from pacs.index.database import open_engine
from pacs.index.migrate import upgrade_database
from pacs.index.orders import OrderRepository
from pacs.index.performed_steps import PerformedStepRepository
from pacs.index.reference import ReferenceRepository
from pacs.index.remote_aes import RemoteAERepository, parse_remote_aes
from pacs.index.repository import IndexRepository
from pacs.index.study_links import StudyLinkRepository
from pacs.index.worklist import WorklistRepository
from pacs.ingest import IngestService
from pacs.pixels.service import PixelService
from pacs.retrieve import RetrieveService
from pacs.security.accounts import AccountService
from pacs.security.authn import Authenticator
from storage import open_blob_store
from storage.base import BlobStore
from worklist.dicom_time import dicom_zone
from worklist.mpps import MppsService
from worklist.mwl import WorklistService
from worklist.orders import OrderService
from worklist.reconcile import Reconciler
from worklist.reference import ReferenceData

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    index: IndexRepository
    blobs: BlobStore
    ingest: IngestService
    retrieve: RetrieveService
    remote_aes: RemoteAERepository
    accounts: AccountService
    authenticator: Authenticator
    audit: AuditTrail
    pixels: PixelService
    orders: OrderService
    worklist: WorklistService
    performed_steps: MppsService
    reconciler: Reconciler

    @classmethod
    def build(cls, settings: Settings, *, migrate: bool = True) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = open_engine(settings.effective_database_url)
        if migrate:
            upgrade_database(engine)
        blobs = open_blob_store(
            settings.effective_storage_url,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            create_bucket=True,
        )
        index = IndexRepository(engine)
        ingest = IngestService(
            index, blobs, duplicate_policy=settings.duplicate_policy, temp_dir=settings.data_dir / "tmp",
            compression=settings.compression_policy,
        )
        remote_aes = RemoteAERepository(engine, parse_remote_aes(settings.remote_aes))
        account_repository = AccountRepository(engine)
        accounts = AccountService(account_repository, token_days=settings.token_days)
        authenticator = Authenticator(account_repository, settings)
        accounts.on_change.append(authenticator.clear_cache)
        audit = AuditTrail(
            AuditRepository(engine), retention_days=settings.audit_retention_days, syslog_url=settings.audit_syslog
        )
        retrieve = RetrieveService(index, blobs)
        orders = OrderService(
            OrderRepository(engine), reference=ReferenceData(ReferenceRepository(engine)),
        )
        zone = dicom_zone(settings.dicom_timezone)
        reconciler = Reconciler(
            StudyLinkRepository(engine), orders, correct_patient=settings.reconcile_patient, audit=audit.record
        )
        ingest.stored_listeners.append(reconciler.on_stored)
        return cls(
            settings, engine, index, blobs, ingest, retrieve, remote_aes, accounts, authenticator, audit,
            PixelService(retrieve), orders,
            worklist=WorklistService(WorklistRepository(engine), zone),
            performed_steps=MppsService(PerformedStepRepository(engine), orders, zone),
            reconciler=reconciler,
        )

    def close(self) -> None:
        self.audit.close()
        self.ingest.close()
        self.blobs.close()
        self.engine.dispose()
