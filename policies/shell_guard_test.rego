package switchboard.shell_guard_test

import rego.v1

import data.switchboard.shell_guard

dispatch(arguments) := {
	"op": "put",
	"phase": "before",
	"key": "tools/shell/run/01JABCDEF0000000000000000",
	"value": {"status": "in_flight"},
	"context": {"agent_id": "shell_agent", "tool": "run", "category": "shell", "action": "dispatch"},
	"input": arguments,
}

test_rm_rf_denied if {
	count(shell_guard.deny) == 1 with input as dispatch({"command": "rm -rf /tmp/build"})
}

test_rm_fr_and_split_flags_denied if {
	count(shell_guard.deny) > 0 with input as dispatch({"command": "cd / && rm -fr ."})
	count(shell_guard.deny) > 0 with input as dispatch({"command": "rm -r -f ~"})
	count(shell_guard.deny) > 0 with input as dispatch({"command": "rm --recursive --force /var"})
}

test_argv_denied if {
	count(shell_guard.deny) > 0 with input as dispatch({"argv": ["rm", "-rf", "/"]})
}

test_nested_string_denied if {
	count(shell_guard.deny) > 0 with input as dispatch({"script": {"lines": ["echo hi", "sudo rm -Rf /home"]}})
}

test_other_destroyers_denied if {
	count(shell_guard.deny) > 0 with input as dispatch({"command": "mkfs.ext4 /dev/sdb1"})
	count(shell_guard.deny) > 0 with input as dispatch({"command": "dd if=/dev/zero of=/dev/sda bs=1M"})
	count(shell_guard.deny) > 0 with input as dispatch({"command": "cat x > /dev/sda"})
	count(shell_guard.deny) > 0 with input as dispatch({"command": ":(){ :|:& };:"})
}

test_message_names_the_command if {
	msgs := shell_guard.deny with input as dispatch({"command": "rm -rf /tmp/build"})
	some msg in msgs
	contains(msg, "rm -rf /tmp/build")
	contains(msg, "recursive rm")
}

test_harmless_commands_allowed if {
	count(shell_guard.deny) == 0 with input as dispatch({"command": "ls -la /tmp"})
	count(shell_guard.deny) == 0 with input as dispatch({"command": "rm notes.txt"})
	count(shell_guard.deny) == 0 with input as dispatch({"command": "grep -r rm ."})
	count(shell_guard.deny) == 0 with input as dispatch({"command": "echo firm -rf"})
	count(shell_guard.deny) == 0 with input as dispatch({"argv": ["grep", "-r", "TODO", "."]})
}

test_writes_without_arguments_allowed if {
	count(shell_guard.deny) == 0 with input as {"op": "put", "phase": "before", "key": "tools/shell/run/1", "value": {}, "context": {}}
}

test_deletes_allowed if {
	count(shell_guard.deny) == 0 with input as object.union(dispatch({"command": "rm -rf /"}), {"op": "delete"})
}
