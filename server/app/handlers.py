"""Which handler takes which command: the registry the bus runs (dependencies bound here)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from runyard.server.app import accounts, experiments, reports, runs
from runyard.server.app import commands as c
from runyard.server.app.experiments import SubmitChecks
from runyard.server.app.unit_of_work import UnitOfWork

Handler = Callable[[Any, UnitOfWork], Any]


def handlers(checks: SubmitChecks | None = None) -> dict[type, Handler]:
    """Every command's handler; `checks` are what a submit is checked against (none: unchecked)."""
    return {
        c.SubmitExperiment: partial(experiments.submit_experiment, checks=checks or SubmitChecks()),
        c.CancelExperiment: experiments.cancel_experiment,
        c.PauseExperiment: experiments.pause_experiment,
        c.ResumeExperiment: experiments.resume_experiment,
        c.SettlePausedRun: experiments.settle_paused_run,
        c.SetExperimentPriority: experiments.set_experiment_priority,
        c.AddTrial: experiments.add_trial,
        c.StopRunEarly: experiments.stop_run_early,
        c.RecordForExperiment: experiments.record_for_experiment,
        c.CancelRun: runs.cancel_run,
        c.PauseRun: runs.pause_run,
        c.ResumeRun: runs.resume_run,
        c.AssignRun: runs.assign_run,
        c.AssignRuns: runs.assign_runs,
        c.PreemptRun: runs.preempt_run,
        c.ExpireAttempt: runs.expire_attempt,
        c.DeclareAgentLost: runs.declare_agent_lost,
        c.DrainAgent: runs.drain_agent,
        c.ApplyAgentReport: reports.apply_report,
        c.ApplyAgentReports: reports.apply_reports,
        c.CreateAccount: accounts.create_account,
        c.SetQuota: accounts.set_quota,
        c.SetAccountStorage: accounts.set_account_storage,
        c.SetAccountPreemption: accounts.set_account_preemption,
        c.CreateApiKey: accounts.create_api_key,
        c.RevokeApiKey: accounts.revoke_api_key,
        c.BootstrapFirstAccount: accounts.bootstrap_first_account,
    }
