module github.com/isoclip/isoclip/bindings/go

go 1.19
