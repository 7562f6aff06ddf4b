# scope: tools/sensitive/**
#
# Only trusted agents may run tools of the `sensitive` category.
#
# Every dispatch writes its record under tools/{category}/{tool}/{invocation_id}
# with the chosen agent's id in input.context.agent_id, so denying the write
# here makes the router skip an untrusted candidate and try the next one.
package switchboard.sensitive_tools

import rego.v1

trusted_agents := {"trusted_agent_1", "trusted_agent_2"}

deny contains msg if {
	input.op == "put"
	not input.context.agent_id in trusted_agents
	msg := sprintf("agent %v is not trusted to run sensitive tools", [object.get(input.context, "agent_id", "(none)")])
}
