"""One identity per person in a personal Jupyter server.

jupyter_server's stock identity provider names every authenticated request that
carries no user cookie (a script with the token, ``nbclient`` through the REST
API, a fresh browser login) as a new random "Anonymous ..." user. Per-user
state keyed on that name multiplies: each scripted kernel start would mint a new
personal key with a fresh default budget. In a personal (non-Hub) server every
request the server authenticates belongs to one person, so
:class:`PersonalIdentityProvider` gives them all one user name.

Authentication itself is unchanged: the stock provider still decides *whether*
a request is authenticated (token, password, cookie); this one only decides
*who* an authenticated request is. :func:`apply_personal_identity` is called by
:class:`~.app.VKeysApp` when jupyter_server links the extension, before the
server builds its identity provider.
"""

from __future__ import annotations

import getpass
import logging
import os
from typing import Any

from jupyter_server.auth.identity import PasswordIdentityProvider, User
from jupyter_server.auth.login import LoginHandler
from traitlets import Unicode
from traitlets.config import Config

log = logging.getLogger("jupyter_vkeys")

HUB_VARIABLES = ("JUPYTERHUB_API_TOKEN", "JUPYTERHUB_SERVICE_PREFIX")


def os_user() -> str:
    """The OS user running this server (the person a personal server belongs to)."""
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        return "jupyter"


class PersonalIdentityProvider(PasswordIdentityProvider):
    """The stock token/password authentication, with one user for every authenticated
    request: :attr:`username` (the OS user unless ``c.VKeysApp.personal_user`` says
    otherwise). Display fields the user changes (name, colour) persist in the cookie as
    usual; the username never changes."""

    username = Unicode("", help="The one user of this personal server; set by jupyter-vkeys "
                                "from c.VKeysApp.personal_user (default: the OS user).").tag(
        config=True)

    def _personal(self) -> User:
        name = self.username or os_user()
        return User(username=name, name=name, display_name=name)

    def generate_anonymous_user(self, handler: Any) -> User:
        """Called by the stock provider for a request it authenticated (token, login form,
        or auth disabled) that names no user: it is this server's one user."""
        return self._personal()

    def user_from_cookie(self, cookie_value: str) -> User | None:
        """Called for a valid login cookie: the cookie's display fields, this server's
        user name (a cookie minted before the extension was installed named someone else)."""
        user = super().user_from_cookie(cookie_value)
        if user is None:
            return None
        personal = self._personal()
        if user.username != personal.username:
            return personal
        return user


def apply_personal_identity(serverapp: Any, username: str) -> str:
    """Make ``serverapp`` use :class:`PersonalIdentityProvider` unless it is a Hub's
    single-user server or its identity provider or login handler is configured.

    Called when the extension is linked (before ``init_configurables`` builds the
    identity provider). Returns the one user's name, or "" when left alone (logged once).
    """
    if any(os.environ.get(name) for name in HUB_VARIABLES):
        log.info("jupyter-vkeys: running under JupyterHub; users come from the Hub")
        return ""
    if serverapp.identity_provider_class is not PasswordIdentityProvider or \
            serverapp.login_handler_class is not LoginHandler:
        log.info("jupyter-vkeys: ServerApp.identity_provider_class (or login_handler_class) "
                 "is configured; its users keep their own names and personal keys")
        return ""
    name = username or os_user()
    serverapp.update_config(Config({"PersonalIdentityProvider": {"username": name}}))
    serverapp.identity_provider_class = PersonalIdentityProvider
    return name
