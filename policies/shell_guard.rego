# scope: tools/shell/**
#
# Refuses shell commands that destroy data: a recursive `rm` (`rm -rf`,
# `rm -r -f`, `rm --recursive`), `mkfs`, `dd` onto a device, writing over a
# disk device, and the classic fork bomb.
#
# A dispatch hands the call's arguments to policies as input.input (the
# record's own copy, input.value.input, may be redacted or cut to a size cap).
# Every string in the arguments (down to four levels of nesting) is checked,
# whatever the field is called, so {"command": "..."}, {"argv": ["rm", "-rf", "/"]} and
# {"script": {"lines": [...]}} are all covered.
package switchboard.shell_guard

import rego.v1

# Plain ASCII classes: the regex engine here has no Unicode `\w` or `\s`.
dangerous := {
	"a recursive rm": `(^|[^A-Za-z0-9_-])rm[ \t]+(-[^ \t]+[ \t]+)*(-[a-zA-Z]*[rR]|--recursive)`,
	"mkfs": `(^|[^A-Za-z0-9_-])mkfs(\.[A-Za-z0-9]+)?([ \t]|$)`,
	"dd onto a device": `(^|[^A-Za-z0-9_-])dd[ \t].*of=/dev/`,
	"a write over a disk device": `>[ \t]*/dev/(sd|hd|vd|nvme|xvd|disk)`,
	"a fork bomb": `:\(\)[ \t]*\{[ \t]*:[ \t]*\|[ \t]*:[ \t]*&[ \t]*\}[ \t]*;[ \t]*:`,
}

# Every value in the arguments, down to four levels of nesting.
values contains v if v := input.input

values contains v if v := input.input[_]

values contains v if v := input.input[_][_]

values contains v if v := input.input[_][_][_]

values contains v if v := input.input[_][_][_][_]

# The arguments as text: every string, and each array of strings joined with
# spaces (an argv such as ["rm", "-rf", "/"]).
texts contains v if {
	some v in values
	is_string(v)
}

texts contains text if {
	some items in values
	is_array(items)
	strings := [item | some item in items; is_string(item)]
	count(strings) > 0
	count(strings) == count(items)
	text := concat(" ", strings)
}

deny contains msg if {
	input.op == "put"
	some text in texts
	some what, pattern in dangerous
	regex.match(pattern, text)
	msg := sprintf("shell command refused: %q is %s (agent %v)", [text, what, object.get(input.context, "agent_id", "(none)")])
}
