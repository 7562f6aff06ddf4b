package switchboard

// Category is a tool category: one of the built-in ones below, or any
// other valid name as a custom one (Category("sensitive")): letters,
// digits and ._:- , 1 to 128 characters.
type Category string

// The built-in categories.
const (
	CategoryCode      Category = "code"
	CategorySearch    Category = "search"
	CategoryDatabase  Category = "database"
	CategoryWeb       Category = "web"
	CategoryFile      Category = "file"
	CategoryGit       Category = "git"
	CategoryShell     Category = "shell"
	CategoryEmbedding Category = "embedding"
)

// Strategy chooses among the healthy agents of a category.
type Strategy string

// The routing strategies (the default is round robin).
const (
	StrategyRoundRobin  Strategy = "round_robin"
	StrategyRandom      Strategy = "random"
	StrategyLeastLoaded Strategy = "least_loaded"
	StrategyPriority    Strategy = "priority"
	// StrategySticky needs a session id (WithSessionID).
	StrategySticky  Strategy = "sticky"
	StrategyFastest Strategy = "fastest"
)
