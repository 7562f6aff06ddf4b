package switchboard.sensitive_tools_test

import rego.v1

import data.switchboard.sensitive_tools

record_by(agent) := {
	"op": "put",
	"phase": "before",
	"key": "tools/sensitive/rotate_keys/01JABCDEF0000000000000000",
	"value": {"status": "in_flight"},
	"context": {"agent_id": agent, "tool": "rotate_keys", "category": "sensitive"},
}

test_trusted_agent_allowed if {
	count(sensitive_tools.deny) == 0 with input as record_by("trusted_agent_1")
}

test_second_trusted_agent_allowed if {
	count(sensitive_tools.deny) == 0 with input as record_by("trusted_agent_2")
}

test_untrusted_agent_denied if {
	sensitive_tools.deny == {"agent code_agent is not trusted to run sensitive tools"} with input as record_by("code_agent")
}

test_missing_agent_denied if {
	count(sensitive_tools.deny) == 1 with input as {"op": "put", "phase": "before", "key": "tools/sensitive/x/1", "value": null, "context": {}}
}

test_delete_not_judged if {
	count(sensitive_tools.deny) == 0 with input as {"op": "delete", "phase": "before", "key": "tools/sensitive/x/1", "value": null, "context": {}}
}
