module example.com/itcare-token

go 1.21
