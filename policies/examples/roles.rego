# scope: tools/**
#
# Identity-aware rules: who may call what, by the caller's roles.
#
# Every dispatch record written before an agent is called carries the
# authenticated caller in input.context: `caller` (its id), `roles` and
# `scopes` (lists) and `claims` (selected claims of its credential).
# Listing tools is a read and is not judged here, so a caller denied below
# still sees the tool; it cannot run it.
package switchboard.roles

import rego.v1

roles := object.get(input.context, "roles", [])

# Only role `payments` may call `refund`.
deny contains "only role payments may call refund" if {
	input.context.action == "dispatch"
	input.context.tool == "refund"
	not "payments" in roles
}

# Interns may list, but not call, shell tools.
deny contains "interns may not call shell tools" if {
	input.context.action == "dispatch"
	input.context.category == "shell"
	"intern" in roles
}
