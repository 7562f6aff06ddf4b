package switchboard.roles_test

import rego.v1

import data.switchboard.roles

dispatch(tool, category, caller_roles) := {
	"op": "put",
	"phase": "before",
	"key": sprintf("tools/%v/%v/01JABCDEF0000000000000000", [category, tool]),
	"value": null,
	"context": {"action": "dispatch", "tool": tool, "category": category, "caller": "token:t1", "roles": caller_roles},
}

test_payments_may_refund if {
	count(roles.deny) == 0 with input as dispatch("refund", "custom", ["payments"])
}

test_others_may_not_refund if {
	roles.deny == {"only role payments may call refund"} with input as dispatch("refund", "custom", ["intern"])
}

test_a_caller_without_roles_may_not_refund if {
	count(roles.deny) == 1 with input as {"op": "put", "phase": "before", "key": "tools/custom/refund/1", "value": null, "context": {"action": "dispatch", "tool": "refund", "category": "custom"}}
}

test_interns_may_not_call_shell_tools if {
	roles.deny == {"interns may not call shell tools"} with input as dispatch("ls", "shell", ["intern"])
}

test_others_may_call_shell_tools if {
	count(roles.deny) == 0 with input as dispatch("ls", "shell", ["ops"])
}

test_outcomes_are_not_judged if {
	count(roles.deny) == 0 with input as object.union(dispatch("ls", "shell", ["intern"]), {"context": {"action": "outcome", "category": "shell", "roles": ["intern"]}})
}
