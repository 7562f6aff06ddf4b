module example.org/switchboard/go

go 1.19
