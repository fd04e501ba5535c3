"""One error shape for every 4xx and 5xx: {"detail": "a readable sentence"}, and for invalid
requests also "errors", the field-by-field list (where, what, which kind) that FastAPI found."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.schemas import Error, FieldError


def field_errors(error: RequestValidationError) -> list[FieldError]:
    return [FieldError(loc=[str(part) for part in item["loc"]], msg=item["msg"], type=item["type"])
            for item in error.errors()]


async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    errors = field_errors(error)
    detail = "invalid request: " + "; ".join(f"{' '.join(e.loc)}: {e.msg}" for e in errors)
    body = Error(detail=detail, errors=errors)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=422)


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse(Error(detail=str(error.detail)).model_dump(exclude_none=True), status_code=error.status_code,
                        headers=error.headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
