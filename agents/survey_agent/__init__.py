"""The survey agent (MiniCPM4-Survey's Plan-Retrieve-Write loop) over a local paper corpus.

- state.py: what a run keeps between steps (and in its SQLite checkpoints);
- retrieval.py: the search_engine tool: keywords searched one by one in the corpus, results fused;
- actions.py: MiniCPM4-Survey's <answer>/<tool_call> response format, parsed without trusting it;
- prompts.py: the `minicpm` prompts (upstream's layout) and the `generic` step-wise prompts;
- generic.py: checks and fallbacks that let small models finish a grounded survey;
- graph.py: the LangGraph graph for both modes, write_survey() and SurveyResult;
- runs.py: what the survey command and the chat app's survey screen share (corpus, mode, earlier runs).
"""

from agents.survey_agent.graph import MODES, SurveyAgent, SurveyResult, write_survey
from agents.survey_agent.retrieval import SearchRecord

__all__ = ["MODES", "SearchRecord", "SurveyAgent", "SurveyResult", "write_survey"]
