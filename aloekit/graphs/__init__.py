"""Conversation graphs: the ALOE turn loop (LangGraph), conversation trees (networkx) and their storage."""

from aloekit.graphs.generation import (
    GenerationState,
    Responder,
    RoleSet,
    build_generation_graph,
    continue_index,
    initial_state,
)
from aloekit.graphs.records import CandidateRecord, TurnRecord
from aloekit.graphs.simulate import (
    ResponderConfig,
    RoleConfig,
    SimulationConfig,
    SimulationSummary,
    build_roles,
    run_conversations,
)
from aloekit.graphs.storage import Conversation, TreeStore
from aloekit.graphs.tree import ConversationTree

__all__ = [
    "CandidateRecord",
    "Conversation",
    "ConversationTree",
    "GenerationState",
    "Responder",
    "ResponderConfig",
    "RoleConfig",
    "RoleSet",
    "SimulationConfig",
    "SimulationSummary",
    "TreeStore",
    "TurnRecord",
    "build_generation_graph",
    "build_roles",
    "continue_index",
    "initial_state",
    "run_conversations",
]
