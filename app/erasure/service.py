"""Delete my account: one transaction asks each domain, top down, to forget the user, then
the objects leave storage.

- generation: queued and running jobs release their holds; every job goes, and the gallery
  takes the images (rows, collection memberships) and collections with it;
- credits: the unused balance is written off by one ``adjustment`` entry, so the tombstone's
  balance and the sum of its entries are both 0. Ledger entries and purchases stay (the
  operator must keep them for accounting) and point at the tombstone;
- admin: the audit log's rows about (or by) the user name the tombstone instead;
- apikeys: the account's API keys go;
- accounts: the user row stays as a tombstone (``deleted-<id>@invalid``, no usable password,
  ``deleted_at`` set); sessions and emailed links go.

After the commit, every key the jobs may have used (images, thumbnails, inputs, previews) is
deleted from storage; a key that cannot be deleted is logged (the rows are already gone).
"""

from __future__ import annotations

import logging

from app.accounts import service as accounts
from app.admin import service as admin
from app.apikeys import service as apikeys
from app.config import Settings
from app.credits import service as credits
from app.db import reading, transaction
from app.generation import service as generation
from app.storage import get_storage

log = logging.getLogger(__name__)


def delete_account(settings: Settings, user_id: int, password: str) -> str:
    """Delete the account if ``password`` is its own; returns the address it had (to say goodbye)."""
    with reading(settings) as session:  # the slow hash outside the write lock
        email = accounts.check_password(session, user_id, password).email
    with transaction(settings) as session:
        keys = generation.forget_user(session, user_id)
        credits.forfeit_balance(session, user_id)
        admin.forget_user(session, user_id)
        apikeys.forget_user(session, user_id)
        accounts.close(session, user_id)
    storage = get_storage(settings)
    for key in keys:
        try:
            storage.delete(key)
        except Exception:
            log.exception("could not delete object %s of deleted user %s", key, user_id)
    log.info("account %s deleted (%d storage keys swept)", user_id, len(keys))
    return email
