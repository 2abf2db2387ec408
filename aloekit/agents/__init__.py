"""Agent roles (user simulator, inducer, responders, judge) and the LLM backends they run on."""

from aloekit.agents.agentchat import AgentChatRole, register_agent_role
from aloekit.agents.backends import BackendPool, ManagedClient, check_spec, parse_spec, register_backend
from aloekit.agents.base import (
    CallRecord,
    PromptRole,
    Role,
    RoleOutput,
    RoleView,
    check_role_options,
    check_template,
    get_role_factory,
    list_roles,
    register_role,
    role_options,
)
from aloekit.agents.inducer import Inducer
from aloekit.agents.judge import INVALID, PreferenceJudge, Verdict, parse_verdict
from aloekit.agents.responder import Responder
from aloekit.agents.user import UserSimulator

__all__ = [
    "INVALID",
    "AgentChatRole",
    "BackendPool",
    "CallRecord",
    "Inducer",
    "ManagedClient",
    "PreferenceJudge",
    "PromptRole",
    "Responder",
    "Role",
    "RoleOutput",
    "RoleView",
    "UserSimulator",
    "Verdict",
    "check_role_options",
    "check_spec",
    "check_template",
    "get_role_factory",
    "list_roles",
    "parse_spec",
    "parse_verdict",
    "register_agent_role",
    "register_backend",
    "register_role",
    "role_options",
]
