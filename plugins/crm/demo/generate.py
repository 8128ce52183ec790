"""Deterministic synthetic data of the embedded demo: ``crm.db``, ``erp.db`` and ``gp.db`` (SQLite).

``python -m crm.demo seed --accounts N [--seed S] [--out DIR] [--invoices-per-account 10]``

Why it is built this way:

- Deterministic: every table (and every chunk of a big table) draws from its own
  ``np.random.default_rng([seed, crc32(table), chunk])`` stream, so the same seed gives the same
  rows whatever the order of generation, the chunking of the load or the number of processes.
  Nothing reads the clock: every timestamp derives from ``business_date``.
- Fast: columns are generated with numpy (no per-row Python), dates become strings through a
  lookup table of day strings, rows go in through the raw ``sqlite3`` connection's ``executemany``
  of multi-row ``INSERT ... VALUES (...), (...)`` statements (parameters laid out by a 2-D object
  array) with ``journal_mode=OFF`` / ``synchronous=OFF`` / ``ignore_check_constraints=ON``, one
  transaction per table; the schema's secondary indexes are dropped before the load and recreated
  after it. The ERP database (the invoices) is written by a forked process while this one writes the
  CRM and GP databases. 1 M accounts / 10 M invoices: about 5 minutes on one busy core.
- Bounded memory: invoices are generated window by window of issue dates (~1 M rows each), CRM
  child tables chunk by chunk of accounts.
- The schema is the project's (``crm.db.*_schema.metadata``, created with ``create_all``); values are
  stored as SQLAlchemy stores them on SQLite ('YYYY-MM-DD', 'YYYY-MM-DD HH:MM:SS.ffffff', 0/1).
- Edge cases the routines must handle are always present, even for a few hundred accounts:
  29 February birthdays and birthdays on the business date, same-day invoices, cancelled invoices,
  leads without ERP code, ERP customers without invoices, overdue and not-yet-due receivables of
  boleto and PIX carnê, inactive PJ partners with overdue receivables, PJ partners without a
  contact whose job function matches 'Conta' / '%Manage%', accounts without any movement.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import multiprocessing
import os
import sqlite3
import sys
import time
import traceback
import unicodedata
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BUSINESS_DATE = dt.date(2026, 11, 22)
EPOCH = dt.date(1970, 1, 1)
INVOICE_CHUNK = 1_000_000  # expected invoice rows per issue-date window
ACCOUNT_CHUNK = 200_000  # accounts per chunk of the CRM child tables
BATCH = 250_000  # rows converted to Python objects and bound per executemany call
ROWS_PER_STATEMENT = 64  # rows per INSERT ... VALUES (...), (...), ... statement
PARALLEL_FROM = 20_000  # accounts from which the ERP database is written by a second process

Log = Callable[[str], None]

# --------------------------------------------------------------------------------------------------
# Reference data
# --------------------------------------------------------------------------------------------------

BR, PL, RO = 0, 1, 2
COUNTRY = ("BR", "PL", "RO")
DOMAIN = ("example.com", "example.pl", "example.ro")
LOCALE = ("pt_BR", "pl_PL", "ro_RO")

# code, name, CNPJ/NIP/CUI, e-mail, phone, timezone, country, share of the accounts
COMPANIES = (
    ("BR01", "Aurora Distribuidora de Alimentos Ltda.", "11222333000181", "contato@example.com", "+551130405060",
     "America/Sao_Paulo", BR, 0.42),
    ("BR02", "Casa Conceição Tecidos e Aviamentos Ltda.", "45723174000110", "sac@example.com", "+553132107700",
     "America/Sao_Paulo", BR, 0.22),
    ("BR03", "Vida Plena Saúde S.A.", "60701190000104", "saude@example.com", "+551140028922",
     "America/Sao_Paulo", BR, 0.16),
    ("PL01", "Łódzka Hurtownia Spożywcza sp. z o.o.", "7251801126", "biuro@example.pl", "+48422000100",
     "Europe/Warsaw", PL, 0.10),
    ("RO01", "Țărână Verde Distribuție S.R.L.", "14399840", "office@example.ro", "+40213100200",
     "Europe/Bucharest", RO, 0.10),
)  # fmt: skip
GP_COMPANY = 2  # BR03 runs the health plan: its accounts carry GP beneficiary codes

FIRST_NAMES = (  # (male, female) per country
    (
        "João,José,Antônio,Francisco,Carlos,Paulo,Pedro,Lucas,Luiz,Marcos,Luís,Gabriel,Rafael,Daniel,Marcelo,"
        "Bruno,Eduardo,Felipe,Raimundo,Rodrigo,Sérgio,Fábio,Márcio,Caio,Otávio,Vinícius,Thiago,Conceição Jr.,"
        "Benedito,Joaquim,Sebastião,Estêvão",
        "Maria,Ana,Francisca,Antônia,Adriana,Juliana,Márcia,Fernanda,Patrícia,Aline,Sandra,Camila,Amanda,Bruna,"
        "Jéssica,Letícia,Júlia,Luciana,Vanessa,Mariana,Gabriela,Conceição,Beatriz,Lúcia,Inês,Cecília,Débora,Tânia,"
        "Mônica,Cláudia,Vitória,Maria da Conceição,Maria José,Ana Cláudia",
    ),
    (
        "Łukasz,Paweł,Michał,Grzegorz,Wojciech,Krzysztof,Piotr,Tomasz,Stanisław,Błażej,Józef,Ryszard,Mirosław,"
        "Jędrzej,Andrzej,Marek,Jacek,Zbigniew",
        "Żaneta,Małgorzata,Agnieszka,Katarzyna,Bożena,Ewa,Anna,Jolanta,Zofia,Dorota,Halina,Elżbieta,Grażyna,"
        "Jadwiga,Urszula,Magdalena,Łucja",
    ),
    (
        "Ștefan,Andrei,Mihai,Ion,Gheorghe,Vasile,Constantin,Alexandru,Răzvan,Bogdan,Florin,Cătălin,Ionuț,Dănuț,"
        "Horia,Tudor,Radu",
        "Ioana,Maria,Elena,Ana,Andreea,Mihaela,Cristina,Alexandra,Mădălina,Irina,Roxana,Ștefania,Oana,Raluca,"
        "Simona,Loredana,Ileana",
    ),
)
SURNAMES = (
    "Silva,Santos,Oliveira,Souza,Rodrigues,Ferreira,Alves,Pereira,Lima,Gomes,Costa,Ribeiro,Martins,Carvalho,"
    "Almeida,Lopes,Soares,Fernandes,Vieira,Barbosa,Rocha,Dias,Nascimento,Andrade,Moreira,Nunes,Marques,Machado,"
    "Mendes,Freitas,Cardoso,Ramos,Gonçalves,Santana,Teixeira,Araújo,Brandão,Conceição,Magalhães,Simões,"
    "Guimarães,Falcão,Assunção,Sant'Anna,D'Ávila,Estêvão,Romão,Leão",
    "Nowak,Kowalski,Wiśniewski,Wójcik,Kowalczyk,Kamiński,Lewandowski,Zieliński,Szymański,Woźniak,Dąbrowski,"
    "Kozłowski,Jankowski,Mazur,Kwiatkowski,Krawczyk,Piotrowski,Grabowski,Pawłowski,Michalski,Król,Wieczorek,"
    "Jabłoński,Wróbel,Górski,Żak,Sobczyk,Łuczak,Sikora,Ostrowski",
    "Popescu,Ionescu,Popa,Pop,Radu,Dumitru,Stan,Stoica,Gheorghe,Matei,Ciobanu,Rusu,Munteanu,Constantin,Mihai,"
    "Lazăr,Marinescu,Țărână,Țurcanu,Șerban,Dobre,Barbu,Nistor,Florea,Tănase,Stănescu,Căpraru,Vlădescu",
)
COMPANY_PARTS = (  # (prefixes, cores, suffixes) of PJ names per country
    (
        "Comercial,Distribuidora,Indústria,Mercadinho,Farmácia,Padaria,Auto Peças,Construtora,Clínica,Laboratório,"
        "Transportadora,Papelaria,Ótica,Açougue,Materiais de Construção,Empório,Atacadão,Confecções",
        "São Jorge,Boa Esperança,Irmãos Conceição,Três Corações,Estrela do Sul,Nova Aliança,Ipê Amarelo,Cajá,"
        "Jequitibá,Sabiá,Araçá,Pôr do Sol,Santa Luzia,Bom Jesus,Paraíso,Itaúna,Guarani,Maracanã,Açaí,Jaraguá",
        "Ltda.,Ltda.,Ltda.,Ltda. ME,EIRELI,S.A.,ME,EPP",
    ),
    (
        "Hurtownia,Zakład,Przedsiębiorstwo Handlowe,Piekarnia,Apteka,Usługi Transportowe,Sklep,Biuro Rachunkowe",
        "Wisła,Mazowsze,Bałtyk,Żuraw,Świt,Śnieżka,Łąka,Kłos,Gąska,Źródło,Pszczółka,Dąb",
        "sp. z o.o.,sp. z o.o.,sp. z o.o.,S.A.,sp.j.,sp.k.",
    ),
    (
        "Comerț,Distribuție,Transport,Construcții,Farmacia,Brutăria,Agro,Servicii",
        "Carpați,Dunărea,Țărână,Mureș,Bucegi,Șoimul,Ceahlău,Bârsa,Olteția,Măgura,Tâmpa,Siret",
        "S.R.L.,S.R.L.,S.R.L.,S.A.,S.R.L.-D",
    ),
)
CITIES = (  # city, state, district, CEP/postal prefix, weight
    (
        ("São Paulo", "SP", "Bela Vista", "01310", 30), ("São Paulo", "SP", "Mooca", "03101", 8),
        ("Campinas", "SP", "Cambuí", "13025", 6), ("Rio de Janeiro", "RJ", "Copacabana", "22041", 12),
        ("Belo Horizonte", "MG", "Savassi", "30112", 9), ("Curitiba", "PR", "Água Verde", "80240", 7),
        ("Porto Alegre", "RS", "Moinhos de Vento", "90570", 6), ("Salvador", "BA", "Barra", "40140", 6),
        ("Recife", "PE", "Boa Viagem", "51020", 5), ("Fortaleza", "CE", "Aldeota", "60150", 5),
        ("Goiânia", "GO", "Setor Bueno", "74210", 3), ("Brasília", "DF", "Asa Sul", "70390", 3),
    ),
    (
        ("Łódź", "łódzkie", "Śródmieście", "90-", 35), ("Warszawa", "mazowieckie", "Mokotów", "02-", 30),
        ("Kraków", "małopolskie", "Podgórze", "30-", 15), ("Gdańsk", "pomorskie", "Wrzeszcz", "80-", 10),
        ("Wrocław", "dolnośląskie", "Krzyki", "53-", 10),
    ),
    (
        ("București", "B", "Sector 1", "0107", 40), ("Cluj-Napoca", "CJ", "Mărăști", "4000", 20),
        ("Iași", "IS", "Copou", "7005", 15), ("Timișoara", "TM", "Fabric", "3000", 15),
        ("Brașov", "BV", "Tractorul", "5000", 10),
    ),
)  # fmt: skip
STREETS = (
    "Rua Augusta,Avenida Paulista,Rua da Consolação,Rua XV de Novembro,Avenida Brasil,Rua São João,"
    "Rua Conceição,Avenida Getúlio Vargas,Rua Tiradentes,Travessa do Ipê,Alameda Santos,Rua D'Ouro",
    "ul. Piotrkowska,ul. Marszałkowska,ul. Świętokrzyska,al. Jerozolimskie,ul. Długa,ul. Łąkowa,ul. Żeromskiego",
    "Strada Lipscani,Bulevardul Unirii,Calea Victoriei,Strada Ștefan cel Mare,Strada Mihai Eminescu,Aleea Țării",
)
COMPLEMENTS = ("Apto 12", "Apto 304", "Sala 5", "Bloco B", "Fundos", "Casa 2", "Loja 1", "m. 4", "ap. 7")
DDD = np.array([11, 11, 11, 11, 19, 21, 21, 31, 41, 51, 61, 71, 81, 85])
# (mobile prefix, landline prefix, digits after the prefix) per country
PHONE_PLAN = ((0, 0, 0), (48500000000, 48420000000, 8), (40700000000, 40210000000, 7))
JOB_FUNCTIONS = (
    "Conta", "Contabilidade", "Manager", "Management", "Director", "Financeiro", "Compras", "Vendas",
    "Logística", "TI", "Gerente de Contas", "Księgowość", "Contabilitate",
)  # fmt: skip
NO_MATCH_FUNCTIONS = ("Compras", "Vendas", "Director", "Logística", "TI")  # none matches 'Conta%' or '%Manage%'
OBSERVATION_TYPES = ("Comercial", "Financeiro", "Cobrança", "Atendimento", "Logística", "Geral")
INTEGRATION_OBSERVATION = "Integração"  # the one observation type sent to the ERP (id len(OBSERVATION_TYPES) + 1)
INTEGRATION_NOTES = ("Cliente retira no CD de Cajamar.", "Emitir NF com pedido do cliente no campo de observação.",
                     "Não aceitar entrega aos sábados.", "Faturar sempre pela matriz.")  # fmt: skip
# (id, code, name, integrates with the ERP): TOTVS "Manutenção Tipo de Conta x Tipo de Cliente"
CUSTOMER_TYPES = ((1, "REVENDA", "Revenda / atacado", 1), (2, "PF_FATURADO", "Pessoa física faturada", 1),
                  (3, "CONSUMIDOR", "Consumidor final (só CRM)", 0), (4, "PROSPECT", "Prospect", 0),
                  (5, "EXTERIOR", "Cliente no exterior (sem integração)", 0))  # fmt: skip
ERP_PHONE_TYPES = ("TELEFONE_ERP1", "TELEFONE_ERP2", "FAX_ERP1", "FAX_ERP2")
OBSERVATION_TEXTS = (
    "Cliente prefere contato pela manhã.", "Solicitou segunda via do boleto.", "Negociou prazo de 60 dias.",
    "Reclamação sobre atraso na entrega resolvida.", "Enviar catálogo atualizado.", "Não ligar aos sábados.",
    "Preferuje kontakt mailowy.", "Clientul a cerut factura în format PDF.", "Atenção: endereço de entrega mudou.",
    "Cliente com histórico de pagamento em dia.", "Pediu descadastro de campanhas promocionais.",
)  # fmt: skip
ACTIVITY_KINDS = ("call", "visit", "email", "meeting", "whatsapp")
ACTIVITY_SUBJECTS = (
    "Retorno de orçamento", "Apresentação de produtos", "Cobrança amigável", "Pós-venda", "Visita de rotina",
    "Negociação de prazo", "Rozmowa handlowa", "Întâlnire de prezentare", "Confirmação de pedido", "Reativação",
)  # fmt: skip
OPPORTUNITY_STAGES = ("prospecting", "qualification", "proposal", "negotiation", "won", "lost")
TICKET_SUBJECTS = (
    "Produto com avaria", "Troca de mercadoria", "Boleto não recebido", "Atraso na entrega", "Dúvida sobre nota fiscal",
    "Reembolso", "Reklamacja dostawy", "Factură greșită",
)  # fmt: skip
TASK_TITLES = (
    ("Retorno de orçamento", "Visita técnica", "Reunião de apresentação", "Cobrança amigável", "Renovação de contrato",
     "Follow-up pós-venda", "Entrega de amostras", "Consulta agendada"),
    ("Spotkanie z klientem", "Telefon w sprawie oferty", "Przypomnienie o płatności", "Wizyta handlowa"),
    ("Întâlnire cu clientul", "Apel de urmărire", "Reamintire plată", "Vizită comercială"),
)  # fmt: skip
CLASSES = (  # code, name, rank, description
    ("BRONZE", "Bronze", 1, "Entrada: até R$ 10 mil acumulados"),
    ("SILVER", "Silver", 2, "R$ 10 mil a R$ 50 mil acumulados ou 10+ compras"),
    ("GOLD", "Gold", 3, "R$ 50 mil a R$ 250 mil acumulados"),
    ("DIAMOND", "Diamond", 4, "Acima de R$ 250 mil acumulados"),
)
GROUPS = ("Varejo", "Atacado", "Distribuidor", "Governo", "Clínicas e Hospitais", "Hurt", "Comerț cu amănuntul")
CARRIERS = ("Transportadora Rápido Sul", "Jadlog", "Correios - PAC", "Correios - SEDEX", "Retira na loja",
            "DPD Polska", "InPost", "FAN Courier")  # fmt: skip
BEARERS = (("Banco do Brasil", "001"), ("Itaú Unibanco", "341"), ("Bradesco", "237"), ("Santander", "033"),
           ("Caixa Econômica Federal", "104"), ("Carteira PIX", None), ("PKO Bank Polski", None),
           ("Banca Transilvania", None))  # fmt: skip
PIX_BEARER = 6
PAYMENT_CONDITIONS = (("À vista", 1, 0), ("30 dias", 1, 30), ("28 DDL", 1, 28), ("30/60", 2, 30),
                      ("30/60/90", 3, 30), ("Carnê 6x", 6, 30), ("Carnê 10x", 10, 30), ("14 dni", 1, 14))  # fmt: skip
CARNE_CONDITIONS = (6, 7)  # ids of the carnê conditions (PIX carnê customers)
PAYMENT_METHODS = ("boleto", "pix_carne", "other")
ORDER_CHANNELS = ("infinite_shelf", "omni", "store", "b2b")
ORDER_STAGES = ("created", "invoiced", "shipped", "delivered")
QUOTE_STATUSES = ("open", "approved", "rejected", "expired", "converted")


def _split(text: str) -> np.ndarray:
    return np.array(text.split(","), dtype=object)


def _ascii(text: str) -> str:
    """'Łukasz Żak' -> 'lukasz.zak': the local part of a demo e-mail address."""
    text = text.replace("ł", "l").replace("Ł", "L").replace(" Jr.", "")
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return ".".join("".join(c for c in word if c.isalnum()) for word in plain.lower().split())


def _slugs(names: np.ndarray) -> np.ndarray:
    return np.array([_ascii(n) for n in names], dtype=object)


def _feminine(surname: str) -> str:
    """Polish feminine surname: Kowalski -> Kowalska."""
    return surname[:-1] + "a" if surname.endswith(("ski", "cki", "dzki")) else surname


# --------------------------------------------------------------------------------------------------
# Vectorised helpers
# --------------------------------------------------------------------------------------------------


def _rng(seed: int, *keys: object) -> np.random.Generator:
    """An independent, reproducible stream per (seed, table, chunk)."""
    return np.random.default_rng([seed, *(zlib.crc32(str(k).encode()) for k in keys)])


def _day(d: dt.date) -> int:
    return (d - EPOCH).days


def _nullable(values: np.ndarray | list, missing: np.ndarray) -> np.ndarray:
    """Object array of values with None where ``missing``."""
    out = np.array(values, dtype=object)
    out[missing] = None
    return out


def _str(values: np.ndarray) -> np.ndarray:
    """int array -> object array of decimal strings."""
    return np.array(list(map(str, values.tolist())), dtype=object)


def _digits(values: np.ndarray, k: int) -> np.ndarray:
    powers = 10 ** np.arange(k - 1, -1, -1, dtype=np.int64)
    return (values.astype(np.int64)[:, None] // powers) % 10


def _digit_strings(mat: np.ndarray) -> np.ndarray:
    """(n, k) matrix of digits -> object array of k-character strings."""
    k = mat.shape[1]
    chars = np.ascontiguousarray(mat.astype(np.uint32) + 48)
    return chars.view(f"U{k}").ravel().astype(object)


def _zfill(values: np.ndarray, k: int) -> np.ndarray:
    return _digit_strings(_digits(values, k))


def _cpf(base9: np.ndarray) -> np.ndarray:
    """Valid CPFs (11 digits) from 9-digit bases."""
    d = _digits(base9, 9)
    d1 = (d @ np.arange(10, 1, -1) * 10 % 11) % 10
    d = np.column_stack([d, d1])
    d2 = (d @ np.arange(11, 1, -1) * 10 % 11) % 10
    return _digit_strings(np.column_stack([d, d2]))


def _cnpj(base8: np.ndarray, branch: np.ndarray) -> np.ndarray:
    """Valid CNPJs (14 digits) from 8-digit roots and 4-digit branch numbers."""
    d = np.column_stack([_digits(base8, 8), _digits(branch, 4)])
    r = d @ np.array([5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]) % 11
    d = np.column_stack([d, np.where(r < 2, 0, 11 - r)])
    r = d @ np.array([6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]) % 11
    return _digit_strings(np.column_stack([d, np.where(r < 2, 0, 11 - r)]))


def _nip(base9: np.ndarray) -> np.ndarray:
    """Valid Polish NIPs (10 digits); a base whose check digit would be 10 is moved to the next one."""
    base9 = base9.copy()
    weights = np.array([6, 5, 7, 2, 3, 4, 5, 6, 7])
    while True:
        d = _digits(base9, 9)
        check = d @ weights % 11
        bad = check == 10
        if not bad.any():
            return _digit_strings(np.column_stack([d, check]))
        base9[bad] += 1


def _cui(base8: np.ndarray) -> np.ndarray:
    """Valid Romanian CUIs (9 digits: 8-digit base + check digit, key 753217532)."""
    d = _digits(base8, 8)
    check = (d @ np.array([5, 3, 2, 1, 7, 5, 3, 2]) * 10 % 11) % 10
    return _digit_strings(np.column_stack([d, check]))


def _unique(seed: int, key: str, index: np.ndarray, lo: int, span: int) -> np.ndarray:
    """Distinct pseudo-random integers in [lo, lo + span) for distinct indexes (an affine permutation)."""
    offset = int(_rng(seed, "unique", key).integers(span))
    return lo + (2_654_435_761 * (index.astype(np.int64) + 1) + offset) % span


def _weighted(rng: np.random.Generator, n: int, weights: Any) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(p), size=n, p=p / p.sum())


class _Clock:
    """Day numbers (days since 1970-01-01) and seconds of day -> SQLAlchemy's SQLite date/datetime strings."""

    def __init__(self, business_date: dt.date) -> None:
        self.bd = _day(business_date)
        self.lo = _day(dt.date(1900, 1, 1))
        days = np.arange(self.lo, self.bd + 4 * 366, dtype=np.int64).astype("datetime64[D]")
        self.day_u = np.datetime_as_string(days)
        self.day_o = self.day_u.astype(object)
        s = np.arange(86_400)
        self.tod_u = np.strings.add(
            np.strings.add(np.strings.add(" ", _zfill(s // 3600, 2).astype("U2")), ":"),
            np.strings.add(
                np.strings.add(
                    np.strings.add(_zfill(s // 60 % 60, 2).astype("U2"), ":"), _zfill(s % 60, 2).astype("U2")
                ),
                ".000000",
            ),
        )

    def date(self, days: np.ndarray, missing: np.ndarray | None = None) -> np.ndarray:
        out = self.day_o[np.asarray(days, dtype=np.int64) - self.lo]
        if missing is not None:
            out = out.copy()
            out[missing] = None
        return out

    def ts(self, days: np.ndarray, seconds: np.ndarray, missing: np.ndarray | None = None) -> np.ndarray:
        days = np.asarray(days, dtype=np.int64)
        seconds = np.asarray(seconds, dtype=np.int64)
        days = days + seconds // 86_400
        out = np.strings.add(self.day_u[days - self.lo], self.tod_u[seconds % 86_400])
        if missing is not None:
            out = out.astype(object)
            out[missing] = None
        return out

    def one(self, day: int, seconds: int = 0) -> str:
        return str(self.ts(np.array([day]), np.array([seconds]))[0])


def _work_seconds(rng: np.random.Generator, n: int, start: int = 8, end: int = 19) -> np.ndarray:
    return rng.integers(start * 3600, end * 3600, n)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


class _Database:
    """One SQLite file: schema from the metadata, secondary indexes dropped during the load, raw executemany."""

    def __init__(self, path: Path, metadata: Any, log: Log) -> None:
        from crm.db import engine_from_url

        self.path, self.log, self.name = path, log, path.name
        self.tables = metadata.tables
        engine = engine_from_url(f"sqlite:///{path}")
        engine.dispose()  # a cached engine of this process must not keep the old file open
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        metadata.create_all(engine)
        engine.dispose()
        self.con = sqlite3.connect(path, isolation_level=None)
        # ignore_check_constraints: an IN (...) CHECK costs ~4x per row under executemany (SQLite rebuilds the
        # list for every step); the generated values satisfy the CHECKs by construction (the tests verify it).
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-262144",
                       "locking_mode=EXCLUSIVE", "ignore_check_constraints=ON"):  # fmt: skip
            self.con.execute(f"PRAGMA {pragma}")
        self.indexes = self.con.execute(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name"
        ).fetchall()
        for name, _, _ in self.indexes:
            self.con.execute(f'DROP INDEX "{name}"')
        self.counts: dict[str, int] = dict.fromkeys(self.tables, 0)

    @contextmanager
    def table(self, name: str) -> Iterator[_TableLoad]:
        load = _TableLoad(self, name)
        self.con.execute("BEGIN")
        try:
            yield load
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")
        self.counts[name] += load.rows
        self.log(f"{self.name:7} {name:27} {load.rows:>12,} rows {time.perf_counter() - load.started:8.1f}s")

    def insert(self, name: str, columns: Mapping[str, Any]) -> int:
        with self.table(name) as load:
            load.add(columns)
        return load.rows

    def finish(self) -> dict[str, int]:
        # The sorter of CREATE INDEX is about twice as fast spilling to temp files (the OS caches them) as with
        # temp_store=MEMORY and a big page cache (measured: 10 M invoices, 29 s -> 13 s per index).
        self.con.execute("PRAGMA cache_size=-2000")
        self.con.execute("PRAGMA temp_store=FILE")
        self.con.execute("PRAGMA mmap_size=4294967296")
        for name, table, sql in self.indexes:
            started = time.perf_counter()
            self.con.execute(sql)
            self.log(f"{self.name:7} index {name:40} {time.perf_counter() - started:8.1f}s  ({table})")
        started = time.perf_counter()
        self.con.execute("PRAGMA ignore_check_constraints=OFF")
        self.con.execute("PRAGMA analysis_limit=1000")
        self.con.execute("ANALYZE")
        self.con.execute("PRAGMA journal_mode=DELETE")
        self.con.close()
        self.log(
            f"{self.name:7} analyze {time.perf_counter() - started:38.1f}s  {self.path.stat().st_size / 1e6:,.1f} MB"
        )
        return self.counts


class _TableLoad:
    def __init__(self, db: _Database, name: str) -> None:
        self.db, self.name, self.rows, self.started = db, name, 0, time.perf_counter()
        self.table = db.tables[name]

    def add(self, columns: Mapping[str, Any]) -> None:
        names = list(columns)
        unknown = set(names) - set(self.table.c.keys())
        if unknown:
            raise KeyError(f"{self.name}: no column(s) {sorted(unknown)}")
        values = [_column(v) for v in columns.values()]
        n = len(values[0]) if values else 0
        if any(len(col) != n for col in values):
            raise ValueError(f"{self.name}: columns of different lengths {[len(c) for c in values]}")
        row = f"({', '.join('?' * len(names))})"
        insert = f'INSERT INTO "{self.name}" ({", ".join(names)}) VALUES '
        per_statement = max(1, min(ROWS_PER_STATEMENT, 30_000 // len(names)))
        many = insert + ", ".join([row] * per_statement)
        for a in range(0, n, BATCH):  # Python objects exist for one batch at a time
            b = min(a + BATCH, n)
            grid = np.empty((b - a, len(values)), dtype=object)
            for j, col in enumerate(values):
                grid[:, j] = col[a:b]
            # Several rows per statement: SQLite's per-statement step/reset cost is paid once for all of them.
            full = (b - a) // per_statement * per_statement
            self.db.con.executemany(many, grid[:full].reshape(-1, per_statement * len(values)).tolist())
            self.db.con.executemany(insert + row, grid[full:].tolist())
        self.rows += n


def _column(values: Any) -> np.ndarray | list:
    """A column for executemany: numpy bools become ints (sqlite3 binds bool through its slow adapter path)."""
    if isinstance(values, np.ndarray):
        return values.astype(np.int8) if values.dtype == bool else values
    return list(values)


# --------------------------------------------------------------------------------------------------
# The shared population: companies, users, accounts and the ERP customers behind them
# --------------------------------------------------------------------------------------------------


@dataclass
class _People:
    name: np.ndarray
    first: np.ndarray
    slug: np.ndarray


def _people(rng: np.random.Generator, country: np.ndarray, female: np.ndarray) -> _People:
    """Person names with the diacritics of each country, and their ASCII e-mail slug."""
    n = len(country)
    name, first, slug = (np.empty(n, dtype=object) for _ in range(3))
    middle = rng.random(n) < 0.35
    for c in (BR, PL, RO):
        surnames = _split(SURNAMES[c])
        for fem in (False, True):
            idx = np.flatnonzero((country == c) & (female == fem))
            if not len(idx):
                continue
            firsts = _split(FIRST_NAMES[c][int(fem)])
            lasts = np.array([_feminine(s) for s in surnames], dtype=object) if fem and c == PL else surnames
            fi = rng.integers(0, len(firsts), len(idx))
            li = rng.integers(0, len(lasts), len(idx))
            f, last = firsts[fi], lasts[li]
            full = f + " " + last
            if c == BR:  # many Brazilians carry two surnames
                m = middle[idx]
                full[m] = f[m] + " " + surnames[rng.integers(0, len(surnames), int(m.sum()))] + " " + last[m]
            first[idx], name[idx] = f, full
            slug[idx] = _slugs(firsts)[fi] + "." + _slugs(lasts)[li]
    return _People(name, first, slug)


def _companies_names(rng: np.random.Generator, country: np.ndarray) -> _People:
    n = len(country)
    name, short, slug = (np.empty(n, dtype=object) for _ in range(3))
    for c in (BR, PL, RO):
        idx = np.flatnonzero(country == c)
        if not len(idx):
            continue
        prefixes, cores, suffixes = (_split(part) for part in COMPANY_PARTS[c])
        p = prefixes[rng.integers(0, len(prefixes), len(idx))]
        ci = rng.integers(0, len(cores), len(idx))
        core = cores[ci]
        s = suffixes[rng.integers(0, len(suffixes), len(idx))]
        name[idx] = p + " " + core + " " + s
        short[idx] = p + " " + core
        slug[idx] = _slugs(cores)[ci]
    return _People(name, short, slug)


@dataclass
class _Population:
    """Everything the CRM, ERP and GP generators share (arrays indexed by account, or by ERP customer)."""

    seed: int
    n: int
    ipa: float
    clock: _Clock
    users: list[dict[str, Any]]
    company: np.ndarray  # company index (0..4)
    country: np.ndarray
    lead: np.ndarray
    pj: np.ndarray
    female: np.ndarray
    active: np.ndarray
    name: np.ndarray
    short_name: np.ndarray
    tax_id: np.ndarray
    email: np.ndarray
    birth: np.ndarray  # day number, meaningless where no_birth
    no_birth: np.ndarray
    locale: np.ndarray
    owner: np.ndarray  # 0: none
    class_id: np.ndarray  # 0: none
    erp_code: np.ndarray  # 0: none
    mobile: np.ndarray  # E.164 or None
    created: np.ndarray
    created_sec: np.ndarray
    opt_out: np.ndarray  # (n, 3): email, sms, whatsapp
    gp_code: np.ndarray  # str or None
    gp_contract: np.ndarray  # contract index per account, -1 none
    n_contracts: int
    # ERP customers, by code index j (code = 1001 + j)
    cust_account: np.ndarray  # account index or -1 (ERP-only)
    cust_company: np.ndarray
    cust_pj: np.ndarray
    cust_created: np.ndarray
    cust_start: np.ndarray
    cust_end: np.ndarray
    cust_invoices: np.ndarray  # planned invoice count
    cust_value: np.ndarray  # median invoice value
    partners_overdue: np.ndarray  # code indexes that get explicit overdue receivables
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bd(self) -> int:
        return self.clock.bd


CODE_BASE = 1001


def _users(seed: int) -> list[dict[str, Any]]:
    """~36 operators: per country some operators and a supervisor; one inactive Brazilian operator."""
    rng = _rng(seed, "crm_user")
    plan = [(BR, 20, 3), (PL, 5, 1), (RO, 5, 1)]
    users: list[dict[str, Any]] = []
    logins: set[str] = set()
    for country, operators, supervisors in plan:
        total = operators + supervisors + (1 if country == BR else 0)
        people = _people(rng, np.full(total, country), rng.random(total) < 0.5)
        for i in range(total):
            login = people.slug[i]
            k = 2
            while login in logins:
                login, k = f"{people.slug[i]}{k}", k + 1
            logins.add(login)
            mobile_prefix = {BR: 5511900000000, PL: 48600000000, RO: 40720000000}[country]
            users.append(
                {
                    "id": len(users) + 1,
                    "login": login,
                    "name": people.name[i],
                    "email": f"{login}@{DOMAIN[country]}",
                    "mobile_phone": f"+{mobile_prefix + int(rng.integers(1_000_000, 9_999_999))}",
                    "locale": LOCALE[country],
                    "is_supervisor": operators <= i < operators + supervisors,
                    "active": i < operators + supervisors,
                    "country": country,
                }
            )
    return users


def _population(seed: int, n: int, ipa: float, business_date: dt.date) -> _Population:
    clock = _Clock(business_date)
    bd = clock.bd
    rng = _rng(seed, "crm_account")
    users = _users(seed)
    idx = np.arange(n)

    company = _weighted(rng, n, [c[7] for c in COMPANIES])
    country = np.array([c[6] for c in COMPANIES])[company]
    lead = rng.random(n) < 0.08
    pj = rng.random(n) < np.where(company == GP_COMPANY, 0.12, 0.35)
    female = rng.random(n) < 0.52
    active = rng.random(n) >= 0.03

    persons = _people(rng, country, female)
    firms = _companies_names(rng, country)
    name = np.where(pj, firms.name, persons.name)
    short_name = np.where(pj, firms.first, persons.first)
    slug = np.where(pj, firms.slug, persons.slug)

    # Tax ids: CPF / CNPJ in Brazil, NIP (PL) and CUI (RO) for companies abroad, none for foreign persons.
    tax_id = np.empty(n, dtype=object)
    br_pf, br_pj = (country == BR) & ~pj, (country == BR) & pj
    tax_id[br_pf] = _cpf(_unique(seed, "cpf", idx[br_pf], 100_000_000, 899_999_999))
    branch = np.where(rng.random(n) < 0.9, 1, rng.integers(2, 12, n))
    tax_id[br_pj] = _cnpj(_unique(seed, "cnpj", idx[br_pj], 10_000_000, 89_999_999), branch[br_pj])
    tax_id[(country == PL) & pj] = _nip(_unique(seed, "nip", idx[(country == PL) & pj], 100_000_000, 899_999_999))
    tax_id[(country == RO) & pj] = _cui(_unique(seed, "cui", idx[(country == RO) & pj], 10_000_000, 89_999_999))
    tax_id[lead & (rng.random(n) < 0.05)] = None  # leads often come without a document

    # E-mail: unique local part (slug + account number), a few missing, a few in capitals.
    number = _str(idx + 1)
    email = slug + "." + number + "@" + np.array(DOMAIN, dtype=object)[country]
    caps = rng.random(n) < 0.01
    email[caps] = np.array([e.title() for e in email[caps]], dtype=object)
    email[rng.random(n) < np.where(lead, 0.25, np.where(pj, 0.05, 0.10))] = None

    # Birth dates (persons only), with a handful of 29 February and of birthdays on the business date.
    age_days = rng.integers(18 * 365, 86 * 365, n)
    birth = bd - age_days
    no_birth = pj | (lead & (rng.random(n) < 0.4))
    pf_idx = np.flatnonzero(~no_birth)
    special = rng.permutation(pf_idx)
    k29 = min(len(special), max(5, len(pf_idx) // 1000))
    ktoday = min(len(special) - k29, max(3, len(pf_idx) // 2000))
    leap_years = rng.choice(np.arange(1944, 2005, 4), k29)
    birth[special[:k29]] = [_day(dt.date(int(y), 2, 29)) for y in leap_years]
    years = rng.integers(1945, 2006, ktoday)
    birth[special[k29 : k29 + ktoday]] = [
        _day(dt.date(int(y), business_date.month, min(business_date.day, 28))) for y in years
    ]

    locale = np.array(LOCALE, dtype=object)[country]
    other = rng.random(n)
    locale[other < 0.04] = np.array(["pt_BR", "en_US", "es_ES", "pl_PL"], dtype=object)[rng.integers(0, 4, n)][
        other < 0.04
    ]
    locale[other > 0.985] = None

    owner = np.zeros(n, dtype=np.int64)
    for c in (BR, PL, RO):
        candidates = np.array([u["id"] for u in users if u["country"] == c and u["active"] and not u["is_supervisor"]])
        m = country == c
        owner[m] = candidates[rng.integers(0, len(candidates), int(m.sum()))]
    inactive_user = next(u["id"] for u in users if not u["active"])
    owner[(country == BR) & (rng.random(n) < 0.02)] = inactive_user
    owner[rng.random(n) < 0.03] = 0

    # ERP integration: ~85% of the accounts carry an ERP customer code (fewer at the health plan).
    p_erp = np.where(lead, 0.03, np.where(company == GP_COMPANY, 0.65, 0.97))
    has_erp = rng.random(n) < p_erp
    acc_with = np.flatnonzero(has_erp)
    n_only = max(3, round(0.05 * len(acc_with)))
    m = len(acc_with) + n_only
    perm = rng.permutation(m)
    erp_code = np.zeros(n, dtype=np.int64)
    erp_code[acc_with] = CODE_BASE + perm[: len(acc_with)]
    cust_account = np.full(m, -1, dtype=np.int64)
    cust_account[perm[: len(acc_with)]] = acc_with
    linked = cust_account >= 0
    cust_company = np.where(linked, company[cust_account], _weighted(rng, m, [0.5, 0.3, 0.0, 0.1, 0.1]))
    cust_pj = np.where(linked, pj[cust_account], rng.random(m) < 0.5)

    # ERP customers are numbered in creation order; the CRM account of an integrated customer shares the date.
    cust_created = np.sort(rng.integers(bd - 12 * 365, bd - 1, m))
    created = np.where(lead, rng.integers(bd - 2 * 365, bd, n), rng.integers(bd - 12 * 365, bd - 1, n))
    created[acc_with] = cust_created[erp_code[acc_with] - CODE_BASE]
    created_sec = _work_seconds(rng, n)

    # Purchase behaviour: 15% never buy; the rest buy a skewed (lognormal) number of invoices inside a window.
    buyer = rng.random(m) >= 0.15
    start = np.clip(cust_created + rng.exponential(45, m).astype(np.int64), bd - 3652, bd)  # ~10 years of history
    churned = rng.random(m) < 0.30
    inactive_acc = linked & ~active[np.maximum(cust_account, 0)]
    churned |= inactive_acc
    end = np.where(churned, start + (rng.random(m) * (bd - start)).astype(np.int64), bd)
    end = np.where(inactive_acc, np.minimum(end, bd - 200), end)
    end = np.maximum(end, start)
    start = np.minimum(start, end)
    weight = rng.lognormal(0.0, 1.5, m) * np.where(cust_pj, 3.0, 1.0) * ((end - start + 30) / 365.0) ** 0.7
    weight[~buyer] = 0.0
    target = max(n * ipa, 0.0)
    buyers = int(buyer.sum())
    if buyers and target >= 1.5 * buyers:
        lam = (target - buyers) * weight / weight.sum()
        invoices = np.where(buyer, 1 + rng.poisson(np.minimum(lam, 5000)), 0)
    elif buyers:
        invoices = rng.poisson(np.minimum(target * weight / weight.sum(), 5000))
    else:
        invoices = np.zeros(m, dtype=np.int64)
    value = rng.lognormal(0.0, 0.6, m) * np.where(cust_pj, 2500.0, 250.0)

    # CRM class mostly follows the purchase volume (with noise, so the class-transition routine has work).
    class_id = np.zeros(n, dtype=np.int64)
    class_id[~lead] = 1
    volume = (invoices * value)[erp_code[acc_with] - CODE_BASE]
    if len(acc_with):
        rank = volume.argsort().argsort() / max(len(acc_with) - 1, 1)
        cls = np.select([rank < 0.5, rank < 0.8, rank < 0.95], [1, 2, 3], 4)
        noise = rng.random(len(acc_with)) < 0.15
        cls[noise] = rng.integers(1, 5, int(noise.sum()))
        class_id[acc_with] = cls

    # Phones: the primary mobile number is shared by the CRM and the ERP customer record.
    mobile = _mobiles(rng, country)
    mobile[rng.random(n) >= np.where(pj, 0.72, 0.88)] = None

    opt_out = rng.random((n, 3)) < np.array([0.05, 0.04, 0.06])

    # GP: persons of the health-plan company are beneficiaries, grouped in family contracts of 1-4.
    gp = (company == GP_COMPANY) & ~pj & (rng.random(n) < 0.8)
    gp_idx = np.flatnonzero(gp)
    sizes = rng.integers(1, 5, len(gp_idx))
    contract_of = np.repeat(np.arange(len(gp_idx)), sizes)[: len(gp_idx)]
    n_contracts = int(contract_of.max()) + 1 if len(gp_idx) else 0
    seq_in_contract = np.arange(len(gp_idx)) - np.searchsorted(contract_of, contract_of)
    gp_contract = np.full(n, -1, dtype=np.int64)
    gp_contract[gp_idx] = contract_of
    gp_code = np.empty(n, dtype=object)
    gp_code[gp_idx] = "0001" + _zfill(contract_of + 1, 7) + _zfill(seq_in_contract + 1, 2)

    # Inactive PJ partners (ERP customers) with overdue receivables; forced so that a few always exist.
    inactive_pj = np.flatnonzero(~active & pj & has_erp)
    if len(inactive_pj) < 3:
        candidates = np.flatnonzero(pj & has_erp & active)
        forced = candidates[: 3 - len(inactive_pj)]
        active[forced] = False
        inactive_pj = np.flatnonzero(~active & pj & has_erp)
    partners_overdue = erp_code[inactive_pj] - CODE_BASE

    return _Population(
        seed=seed, n=n, ipa=ipa, clock=clock, users=users, company=company, country=country, lead=lead, pj=pj,
        female=female, active=active, name=name, short_name=short_name, tax_id=tax_id, email=email, birth=birth,
        no_birth=no_birth, locale=locale, owner=owner, class_id=class_id, erp_code=erp_code, mobile=mobile,
        created=created, created_sec=created_sec, opt_out=opt_out, gp_code=gp_code, gp_contract=gp_contract,
        n_contracts=n_contracts, cust_account=cust_account, cust_company=cust_company, cust_pj=cust_pj,
        cust_created=cust_created, cust_start=start, cust_end=end, cust_invoices=invoices.astype(np.int64),
        cust_value=value, partners_overdue=partners_overdue,
    )  # fmt: skip


def _mobiles(rng: np.random.Generator, country: np.ndarray) -> np.ndarray:
    """E.164 mobile numbers per country (Brazil: +55 DDD 9 XXXX-XXXX)."""
    n = len(country)
    br = 5_500_000_000_000 + DDD[rng.integers(0, len(DDD), n)] * 1_000_000_000 + 900_000_000
    br += rng.integers(60_000_000, 99_999_999, n)
    pl = 48_500_000_000 + rng.integers(0, 299_999_999, n)
    ro = 40_700_000_000 + rng.integers(0, 99_999_999, n)
    return "+" + _str(np.select([country == BR, country == PL], [br, pl], ro))


def _landlines(rng: np.random.Generator, country: np.ndarray) -> np.ndarray:
    n = len(country)
    br = (
        5_500_000_000_000 // 10
        + DDD[rng.integers(0, len(DDD), n)] * 100_000_000
        + rng.integers(20_000_000, 59_999_999, n)
    )
    pl = 48_220_000_000 + rng.integers(0, 9_999_999, n)
    ro = 40_210_000_000 + rng.integers(0, 9_999_999, n)
    return "+" + _str(np.select([country == BR, country == PL], [br, pl], ro))


def _local_format(numbers: np.ndarray) -> np.ndarray:
    """'+5511987654321' -> '(11) 98765-4321': how some operators type numbers (not E.164)."""
    out = []
    for num in numbers:
        if num.startswith("+55"):
            d = num[3:]
            out.append(f"({d[:2]}) {d[2:-4]}-{d[-4:]}")
        else:
            out.append(f"{num[3:6]} {num[6:9]} {num[9:]}")
    return np.array(out, dtype=object)


# --------------------------------------------------------------------------------------------------
# CRM
# --------------------------------------------------------------------------------------------------


def _ts_now(pop: _Population, days_back: int = 0, seconds: int = 6 * 3600) -> str:
    return pop.clock.one(pop.bd - days_back, seconds)


def _crm_reference(db: _Database, pop: _Population) -> None:
    clock, bd = pop.clock, pop.bd
    stamp = _ts_now(pop, 400)
    db.insert(
        "crm_company",
        {
            "id": list(range(1, len(COMPANIES) + 1)),
            "code": [c[0] for c in COMPANIES],
            "name": [c[1] for c in COMPANIES],
            "tax_id": [c[2] for c in COMPANIES],
            "email": [c[3] for c in COMPANIES],
            "phone": [c[4] for c in COMPANIES],
            "timezone": [c[5] for c in COMPANIES],
            "locale": [LOCALE[c[6]] for c in COMPANIES],
            "active": [1] * len(COMPANIES),
            "created_at": [stamp] * len(COMPANIES),
            "updated_at": [stamp] * len(COMPANIES),
        },
    )
    users = pop.users
    db.insert(
        "crm_user",
        {
            **{k: [u[k] for u in users] for k in ("id", "login", "name", "email", "mobile_phone", "locale")},
            "is_supervisor": [int(u["is_supervisor"]) for u in users],
            "active": [int(u["active"]) for u in users],
            "created_at": [stamp] * len(users),
            "updated_at": [_ts_now(pop, 30 if not u["active"] else 200) for u in users],
        },
    )
    db.insert(
        "crm_class",
        {k: [c[i] for c in CLASSES] for i, k in enumerate(("code", "name", "rank", "description"))}
        | {"id": [1, 2, 3, 4]},
    )
    db.insert("crm_job_function", {"id": range(1, len(JOB_FUNCTIONS) + 1), "name": JOB_FUNCTIONS})
    db.insert(
        "crm_observation_type",
        {"id": range(1, len(OBSERVATION_TYPES) + 2), "name": [*OBSERVATION_TYPES, INTEGRATION_OBSERVATION]},
    )
    db.insert(
        "crm_customer_type",
        {k: [t[i] for t in CUSTOMER_TYPES] for i, k in enumerate(("id", "code", "name", "integrates_erp"))},
    )
    db.insert(
        "crm_audience",
        {
            "id": [1, 2, 3, 4, 5],
            "code": ["VIP", "SP_CAPITAL", "B2B", "PL_KLUCZOWI", "NEWSLETTER_2027"],
            "name": [
                "Clientes VIP",
                "Capital de São Paulo",
                "Empresas (B2B)",
                "Kluczowi klienci (Polska)",
                "Newsletter 2027 (vazia)",
            ],
            "description": [
                "Gold e Diamond ativos escolhidos pelo comercial",
                "Endereço de correspondência na cidade de São Paulo",
                "Pessoas jurídicas integradas ao ERP",
                "Klienci kluczowi spółki PL01",
                "Público ainda sem membros",
            ],
        },
    )
    db.insert(
        "crm_class_transition_rule",
        {
            "id": [1, 2, 3, 4, 5, 6],
            "from_class_id": [None, None, 1, 3, 2, None],
            "to_class_id": [4, 3, 2, 2, 1, 1],
            "measure": [
                "accumulated_value",
                "accumulated_value",
                "purchase_count",
                "days_since_last_purchase",
                "days_since_last_purchase",
                "purchase_count",
            ],
            "operator": [">=", ">=", ">=", ">=", ">=", "<="],
            "threshold": [250_000.0, 50_000.0, 10.0, 365.0, 540.0, 0.0],
            "window_months": [None, 24, 12, None, None, 36],
            "priority": [10, 20, 30, 40, 50, 60],
            "active": [1, 1, 1, 1, 1, 0],
            "description": [
                "Qualquer classe -> Diamond ao acumular R$ 250 mil",
                "Qualquer classe -> Gold com R$ 50 mil nos últimos 24 meses",
                "Bronze -> Silver com 10 compras nos últimos 12 meses",
                "Gold -> Silver após 1 ano sem comprar",
                "Silver -> Bronze após 18 meses sem comprar",
                "Desativada: nenhuma compra em 36 meses -> Bronze",
            ],
        },
    )
    supervisors = [u["id"] for u in users if u["is_supervisor"] and u["country"] == BR]
    operators = [u["id"] for u in users if u["active"] and not u["is_supervisor"] and u["country"] == BR]
    db.insert(
        "crm_inactivity_profile",
        {
            "id": [1, 2],
            "code": ["90_DAYS_NOTIFY", "180_DAYS_TRANSFER"],
            "name": ["Sem movimento há 90 dias: avisar", "Sem movimento há 180 dias: transferir"],
            "period_days": [90, 180],
            "count_activities": [1, 1],
            "count_opportunities": [1, 1],
            "count_tickets": [0, 1],
            "count_purchases": [1, 1],
            "transfer": [0, 1],
            "transfer_to_user_ids": [None, json.dumps(operators[:2])],
            # the first profile also notifies an operator, who gets only the accounts they own
            "notify_user_ids": [json.dumps([*supervisors[:2], operators[2]]), json.dumps(supervisors[:1])],
            "email_template": ["account_inactivity", "account_inactivity_transfer"],
            "active": [1, 1],
        },
    )
    reminder = {"company_id": [], "enabled": [], "sender_user_id": [], "sender_email": []}
    for side in ("customer", "operator"):
        for col in ("defaults_enabled", "default_channel", "sms_template", "sms_offset_minutes", "email_template",
                    "email_offset_minutes"):  # fmt: skip
            reminder[f"{side}_{col}"] = []
    for i, c in enumerate(COMPANIES, start=1):
        sender = next(u for u in users if u["country"] == c[6] and u["is_supervisor"])
        values = {
            "company_id": i,
            "enabled": int(i != 3),
            "sender_user_id": sender["id"],
            "sender_email": c[3],
            "customer_defaults_enabled": 1,
            "customer_default_channel": "sms" if c[6] == BR else "email",
            "customer_sms_template": "task_reminder",
            "customer_sms_offset_minutes": 120,
            "customer_email_template": "task_reminder",
            "customer_email_offset_minutes": 1440,
            "operator_defaults_enabled": int(i in (1, 4)),
            "operator_default_channel": "email",
            "operator_sms_template": None,
            "operator_sms_offset_minutes": None,
            "operator_email_template": "task_reminder_operator",
            "operator_email_offset_minutes": 30,
        }
        for k, v in values.items():
            reminder[k].append(v)
    db.insert("crm_reminder_settings", reminder)

    fetched = clock.one(bd - 1, 3 * 3600)
    templates = [
        ("aviso_boleto_vencimento", "pt_BR", "APPROVED",
         "Olá {{1}}, o boleto {{2}} de {{3}} vence em {{4}}. Linha digitável: {{5}}", 5),
        ("aviso_carne_pix", "pt_BR", "APPROVED",
         "Olá {{1}}, a parcela {{2}} do seu carnê ({{3}}) vence em {{4}}. Pague com o PIX copia e cola: {{5}}", 5),
        ("pedido_faturado", "pt_BR", "APPROVED", "{{1}}, seu pedido {{2}} foi faturado. Nota fiscal {{3}}.", 3),
        ("pedido_enviado", "pt_BR", "APPROVED", "{{1}}, seu pedido {{2}} saiu para entrega pela {{3}}.", 3),
        ("pedido_entregue", "pt_BR", "APPROVED", "{{1}}, seu pedido {{2}} foi entregue. Obrigado!", 2),
        ("pedido_cancelado", "pt_BR", "PENDING", "{{1}}, seu pedido {{2}} foi cancelado.", 2),
        ("promo_black_friday", "pt_BR", "REJECTED", "Black Friday: {{1}}% de desconto!", 1),
        ("faktura_termin_platnosci", "pl_PL", "APPROVED",
         "Dzień dobry {{1}}, faktura {{2}} na kwotę {{3}} ma termin płatności {{4}}.", 4),
        ("zamowienie_wyslane", "pl_PL", "APPROVED", "{{1}}, zamówienie {{2}} zostało wysłane.", 2),
        ("factura_scadenta", "ro_RO", "APPROVED", "Bună ziua {{1}}, factura {{2}} de {{3}} este scadentă pe {{4}}.", 4),
        ("comanda_livrata", "ro_RO", "APPROVED", "{{1}}, comanda {{2}} a fost livrată. Mulțumim!", 2),
    ]  # fmt: skip
    db.insert(
        "crm_whatsapp_template",
        {k: [t[i] for t in templates] for i, k in enumerate(("name", "language", "status", "body", "parameter_count"))}
        | {"fetched_at": [fetched] * len(templates)},
    )
    due = ["customer_name", "document_number", "amount", "due_date", "digitable_line"]
    order = ["customer_name", "order_number", "carrier"]
    configs = [  # company, message type, template, chip, active, parameter fields
        (1, "due_boleto", "aviso_boleto_vencimento", "+5511999990001", 1, due),
        (1, "due_carne", "aviso_carne_pix", "+5511999990001", 1, [*due[:4], "pix_code"]),
        (1, "order_stage:invoiced", "pedido_faturado", None, 0, ["customer_name", "order_number", "invoice_number"]),
        (1, "order_stage:shipped", "pedido_enviado", None, 1, order),
        (1, "order_stage:delivered", "pedido_entregue", None, 1, order[:2]),
        (2, "due_boleto", "aviso_boleto_vencimento", "+5531999990002", 1, due),
        (2, "due_carne", "aviso_carne_pix", "+5531999990002", 1, [*due[:4], "pix_code"]),
        (2, "order_stage:shipped", "pedido_enviado", "+5531999990002", 1, order),
        (3, "due_boleto", "aviso_boleto_vencimento", None, 1, due),
        (4, "due_boleto", "faktura_termin_platnosci", "+48600100200", 1, due[:4]),
        (4, "order_stage:shipped", "zamowienie_wyslane", "+48600100200", 1, order[:2]),
        (5, "due_boleto", "factura_scadenta", None, 1, due[:4]),
        (5, "order_stage:delivered", "comanda_livrata", None, 1, order[:2]),
    ]
    db.insert(
        "crm_whatsapp_config",
        {
            "id": range(1, len(configs) + 1),
            "company_id": [c[0] for c in configs],
            "message_type": [c[1] for c in configs],
            "template_name": [c[2] for c in configs],
            "chip": [c[3] for c in configs],
            "active": [c[4] for c in configs],
            "parameter_fields": [json.dumps(c[5]) for c in configs],
            "created_at": [stamp] * len(configs),
            "updated_at": [_ts_now(pop, 10)] * len(configs),
        },
    )


def _chunks(n: int, size: int = ACCOUNT_CHUNK) -> Iterator[tuple[int, int, int]]:
    for k, a in enumerate(range(0, max(n, 1), size)):
        yield k, a, min(a + size, n)


@dataclass
class _ErpIntegration:
    customer_type: np.ndarray  # crm_customer_type id per account
    integrates: np.ndarray  # bool: the type integrates with the ERP
    ids: dict[str, np.ndarray]  # crm_account.erp_*_id columns, 0 = not chosen


def _erp_integration(pop: _Population) -> _ErpIntegration:
    """What crm_erp_account_sync checks: customer types, the ERP choices, and the data errors it must report.

    Brazilian companies resell (type REVENDA), a share of Brazilian persons are invoiced (PF_FATURADO),
    the other persons are CRM-only consumers, leads are prospects, foreign accounts do not integrate.
    Among integrating accounts a few lack a choice or name an id the ERP does not know; missing addresses and
    ERP key clashes (duplicate short names) come from the rest of the data. Documents stay valid (the tests
    plant wrong check digits themselves).
    """
    if "erp_integration" in pop.extra:
        return pop.extra["erp_integration"]
    rng = _rng(pop.seed, "crm_account", "erp_integration")
    n = pop.n
    br = pop.country == BR
    invoiced = rng.random(n) < 0.25
    ctype = np.select([pop.lead, ~br, pop.pj, invoiced], [4, 5, 1, 2], 3).astype(np.int64)
    integrates = (ctype == 1) | (ctype == 2)
    sizes = {"erp_group_id": len(GROUPS), "erp_representative_id": 16, "erp_carrier_id": len(CARRIERS),
             "erp_bearer_id": len(BEARERS), "erp_payment_condition_id": len(PAYMENT_CONDITIONS)}  # fmt: skip
    ids = {}
    for col, size in sizes.items():
        v = rng.integers(1, size + 1, n)
        v[rng.random(n) < 0.03] = 0  # not chosen
        v[rng.random(n) < 0.01] = 900 + size  # an id the ERP does not know
        v[~integrates] = 0
        ids[col] = v
    out = _ErpIntegration(ctype, integrates, ids)
    pop.extra["erp_integration"] = out
    return out


def _crm_accounts(db: _Database, pop: _Population) -> None:
    clock, bd = pop.clock, pop.bd
    rng = _rng(pop.seed, "crm_account", "timestamps")
    updated = np.minimum(pop.created + rng.integers(0, 900, pop.n), bd - 1)
    erp = _erp_integration(pop)
    with db.table("crm_account") as t:
        for _, a, b in _chunks(pop.n):
            s = slice(a, b)
            t.add(
                {
                    "id": np.arange(a + 1, b + 1),
                    "company_id": pop.company[s] + 1,
                    "kind": np.where(pop.lead[s], "lead", "account").astype(object),
                    "person_type": np.where(pop.pj[s], "PJ", "PF").astype(object),
                    "name": pop.name[s],
                    "short_name": pop.short_name[s],
                    "email": pop.email[s],
                    "birth_date": clock.date(np.where(pop.no_birth[s], bd, pop.birth[s]), pop.no_birth[s]),
                    "locale": pop.locale[s],
                    "owner_id": _nullable(pop.owner[s], pop.owner[s] == 0),
                    "class_id": _nullable(pop.class_id[s], pop.class_id[s] == 0),
                    "erp_customer_code": _nullable(pop.erp_code[s], pop.erp_code[s] == 0),
                    "gp_beneficiary_code": pop.gp_code[s],
                    "tax_id": pop.tax_id[s],
                    "customer_type_id": erp.customer_type[s],
                    **{col: _nullable(v[s], v[s] == 0) for col, v in erp.ids.items()},
                    "active": pop.active[s],
                    "opt_out_email": pop.opt_out[s, 0],
                    "opt_out_sms": pop.opt_out[s, 1],
                    "opt_out_whatsapp": pop.opt_out[s, 2],
                    "created_at": clock.ts(pop.created[s], pop.created_sec[s]),
                    "updated_at": clock.ts(updated[s], pop.created_sec[s] + 1800),
                }
            )


def _crm_contacts(db: _Database, pop: _Population) -> dict[str, np.ndarray]:
    """Contacts of PJ accounts; returns what the phone table needs (contact id, country)."""
    clock, bd = pop.clock, pop.bd
    no_match_ids = np.array([JOB_FUNCTIONS.index(f) + 1 for f in NO_MATCH_FUNCTIONS])
    listed = np.arange(1, 9)  # the eight functions the overdue-notice routine filters on
    ids, countries = [], []
    next_id = 1
    with db.table("crm_contact") as t:
        for k, a, b in _chunks(pop.n):
            rng = _rng(pop.seed, "crm_contact", k)
            acc = np.arange(a, b)[pop.pj[a:b]]
            count = np.where(rng.random(len(acc)) < 0.15, 0, rng.integers(1, 5, len(acc)))
            no_match = rng.random(len(acc)) < 0.12
            if k == 0:  # always a few partners whose contacts match none of the patterns
                no_match[:: max(1, len(acc) // 5)] = True
                count[no_match & (count == 0)] = 2
            rows = np.repeat(acc, count)
            n = len(rows)
            row_no_match = np.repeat(no_match, count)
            job = rng.integers(1, len(JOB_FUNCTIONS) + 1, n)
            job[row_no_match] = no_match_ids[rng.integers(0, len(no_match_ids), int(row_no_match.sum()))]
            no_job = rng.random(n) < 0.15
            if k == 0:  # the listed functions always exist
                first_ok = np.flatnonzero(~row_no_match)[: len(listed)]
                job[first_ok], no_job[first_ok] = listed[: len(first_ok)], False
            country = pop.country[rows]
            people = _people(rng, country, rng.random(n) < 0.5)
            email = people.slug + "." + _str(next_id + np.arange(n)) + "@" + np.array(DOMAIN, dtype=object)[country]
            email[rng.random(n) < 0.1] = None
            created = np.minimum(pop.created[rows] + rng.integers(0, 700, n), bd - 1)
            contact_ids = next_id + np.arange(n)
            t.add(
                {
                    "id": contact_ids,
                    "account_id": rows + 1,
                    "name": people.name,
                    "email": email,
                    "job_function_id": _nullable(job, no_job),
                    "locale": pop.locale[rows],
                    "active": rng.random(n) >= 0.07,
                    "opt_out_email": rng.random(n) < 0.03,
                    "created_at": clock.ts(created, _work_seconds(rng, n)),
                    "updated_at": clock.ts(created, _work_seconds(rng, n, 19, 20)),
                }
            )
            ids.append(contact_ids)
            countries.append(country)
            next_id += n
    return {"id": np.concatenate(ids), "country": np.concatenate(countries)}


def _crm_phones(db: _Database, pop: _Population, contacts: dict[str, np.ndarray]) -> None:
    clock, bd = pop.clock, pop.bd
    next_id = 1
    with db.table("crm_phone") as t:
        for k, a, b in _chunks(pop.n):
            rng = _rng(pop.seed, "crm_phone", k)
            acc = np.arange(a, b)
            country = pop.country[a:b]
            has_mobile = np.not_equal(pop.mobile[a:b], None)
            landline = rng.random(len(acc)) < np.where(pop.pj[a:b], 0.5, 0.3)
            commercial = rng.random(len(acc)) < np.where(pop.pj[a:b], 0.85, 0.08)
            second = has_mobile & (rng.random(len(acc)) < 0.05)
            parts = [  # (account index, type order, type, number)
                (acc[has_mobile], 0, "mobile", pop.mobile[a:b][has_mobile]),
                (acc[second], 1, "mobile", _mobiles(rng, country[second])),
                (acc[landline], 2, "landline", _landlines(rng, country[landline])),
                (acc[commercial], 3, "commercial", _landlines(rng, country[commercial])),
            ]
            owner = np.concatenate([p[0] for p in parts])
            order = np.concatenate([np.full(len(p[0]), p[1]) for p in parts])
            kind = np.concatenate([np.full(len(p[0]), p[2], dtype=object) for p in parts])
            number = np.concatenate([p[3] for p in parts])
            sort = np.lexsort((order, owner))
            owner, kind, number = owner[sort], kind[sort], number[sort]
            primary = np.ones(len(owner), dtype=bool)
            primary[1:] = owner[1:] != owner[:-1]
            local = np.flatnonzero(rng.random(len(owner)) < 0.02) if len(owner) else np.array([], dtype=np.int64)
            local = local[~primary[local]] if len(local) else local  # the primary mobile stays E.164
            number[local] = _local_format(number[local])
            n = len(owner)
            created = np.minimum(pop.created[owner] + rng.integers(0, 30, n), bd - 1)
            t.add(
                {
                    "id": next_id + np.arange(n),
                    "account_id": owner + 1,
                    "contact_id": [None] * n,
                    "phone_type": kind,
                    "number": number,
                    "is_primary": primary,
                    "created_at": clock.ts(created, _work_seconds(rng, n)),
                    "updated_at": clock.ts(created, _work_seconds(rng, n, 19, 20)),
                }
            )
            next_id += n
        rng = _rng(pop.seed, "crm_phone", "contacts")
        pick = rng.random(len(contacts["id"])) < 0.45
        cid, country = contacts["id"][pick], contacts["country"][pick]
        n = len(cid)
        days = bd - rng.integers(1, 1500, n)
        t.add(
            {
                "id": next_id + np.arange(n),
                "account_id": [None] * n,
                "contact_id": cid,
                "phone_type": np.full(n, "mobile", dtype=object),
                "number": _mobiles(rng, country),
                "is_primary": np.ones(n, dtype=bool),
                "created_at": clock.ts(days, _work_seconds(rng, n)),
                "updated_at": clock.ts(days, _work_seconds(rng, n, 19, 20)),
            }
        )
        next_id += n
        # Phones typed for the ERP integration (only these types are sent), on accounts that integrate.
        rng = _rng(pop.seed, "crm_phone", "erp")
        integrating = np.flatnonzero(_erp_integration(pop).integrates)
        for kind, share in zip(ERP_PHONE_TYPES, (0.8, 0.25, 0.15, 0.05), strict=True):
            rows = integrating[rng.random(len(integrating)) < share]
            n = len(rows)
            days = np.minimum(pop.created[rows] + rng.integers(0, 30, n), bd - 1)
            t.add(
                {
                    "id": next_id + np.arange(n),
                    "account_id": rows + 1,
                    "contact_id": [None] * n,
                    "phone_type": np.full(n, kind, dtype=object),
                    "number": _landlines(rng, pop.country[rows]),
                    "is_primary": np.zeros(n, dtype=bool),
                    "created_at": clock.ts(days, _work_seconds(rng, n)),
                    "updated_at": clock.ts(days, _work_seconds(rng, n, 19, 20)),
                }
            )
            next_id += n


def _crm_addresses(db: _Database, pop: _Population) -> np.ndarray:
    """Correspondence, billing and delivery addresses; returns the accounts in the city of São Paulo."""
    cities = [np.array(c, dtype=object) for c in CITIES]
    streets = [_split(s) for s in STREETS]
    complements = np.array(COMPLEMENTS, dtype=object)
    sp_capital = []
    next_id = 1
    with db.table("crm_address") as t:
        for k, a, b in _chunks(pop.n):
            rng = _rng(pop.seed, "crm_address", k)
            acc = np.arange(a, b)
            country = pop.country[a:b]
            city = np.zeros(len(acc), dtype=np.int64)
            for c in (BR, PL, RO):
                m = country == c
                city[m] = _weighted(rng, int(m.sum()), cities[c][:, 4].astype(float))
            types = [("correspondence", 0.95), ("billing", np.where(pop.pj[a:b], 0.7, 0.4)), ("delivery", 0.3)]
            for kind, p in types:
                m = rng.random(len(acc)) < p
                rows, c, ci = acc[m], country[m], city[m]
                if kind != "correspondence":  # billing/delivery elsewhere now and then
                    move = rng.random(len(rows)) < 0.2
                    ci = np.where(move, rng.integers(0, 5, len(rows)), ci)
                n = len(rows)
                street = np.empty(n, dtype=object)
                city_name, state, district, postal = (np.empty(n, dtype=object) for _ in range(4))
                for cc in (BR, PL, RO):
                    mm = c == cc
                    table = cities[cc][ci[mm]]
                    city_name[mm], state[mm], district[mm] = table[:, 0], table[:, 1], table[:, 2]
                    tail = rng.integers(0, 1000, int(mm.sum()))
                    if cc == BR:
                        postal[mm] = table[:, 3] + "-" + _zfill(tail, 3)
                    elif cc == PL:
                        postal[mm] = table[:, 3] + _zfill(tail, 3)
                    else:
                        postal[mm] = table[:, 3] + _zfill(tail % 100, 2)
                    street[mm] = streets[cc][rng.integers(0, len(streets[cc]), int(mm.sum()))]
                number = _str(rng.integers(1, 3000, n))
                number[rng.random(n) < 0.03] = "S/N"
                if kind == "correspondence":
                    sp_capital.append(rows[city_name == "São Paulo"])
                t.add(
                    {
                        "id": next_id + np.arange(n),
                        "account_id": rows + 1,
                        "address_type": np.full(n, kind, dtype=object),
                        "street": street,
                        "number": number,
                        "complement": _nullable(complements[rng.integers(0, len(complements), n)], rng.random(n) < 0.7),
                        "district": district,
                        "city": city_name,
                        "state": state,
                        "postal_code": postal,
                        "country": np.array(COUNTRY, dtype=object)[c],
                    }
                )
                next_id += n
    return np.concatenate(sp_capital) if sp_capital else np.array([], dtype=np.int64)


def _crm_observations(db: _Database, pop: _Population) -> None:
    clock, bd = pop.clock, pop.bd
    texts = np.array(OBSERVATION_TEXTS, dtype=object)
    next_id = 1
    with db.table("crm_observation") as t:
        for k, a, b in _chunks(pop.n):
            rng = _rng(pop.seed, "crm_observation", k)
            count = np.where(rng.random(b - a) < 0.25, rng.integers(1, 4, b - a), 0)
            rows = np.repeat(np.arange(a, b), count)
            n = len(rows)
            days = np.maximum(pop.created[rows], bd - 1500) + rng.integers(0, 1500, n)
            days = np.minimum(days, bd - 1)
            t.add(
                {
                    "id": next_id + np.arange(n),
                    "account_id": rows + 1,
                    "observation_type_id": rng.integers(1, len(OBSERVATION_TYPES) + 1, n),
                    "text": texts[rng.integers(0, len(texts), n)],
                    "created_by": _nullable(pop.owner[rows], pop.owner[rows] == 0),
                    "created_at": clock.ts(days, _work_seconds(rng, n)),
                    "updated_at": clock.ts(days, _work_seconds(rng, n, 19, 20)),
                }
            )
            next_id += n
        # Observations of type 'Integração' (the only ones sent to the ERP), one or two per account.
        rng = _rng(pop.seed, "crm_observation", "erp")
        integrating = np.flatnonzero(_erp_integration(pop).integrates)
        rows = np.repeat(
            integrating, np.where(rng.random(len(integrating)) < 0.3, rng.integers(1, 3, len(integrating)), 0)
        )
        n = len(rows)
        days = np.minimum(np.maximum(pop.created[rows], bd - 900) + rng.integers(0, 900, n), bd - 1)
        notes = np.array(INTEGRATION_NOTES, dtype=object)
        t.add(
            {
                "id": next_id + np.arange(n),
                "account_id": rows + 1,
                "observation_type_id": np.full(n, len(OBSERVATION_TYPES) + 1),
                "text": notes[rng.integers(0, len(notes), n)],
                "created_by": _nullable(pop.owner[rows], pop.owner[rows] == 0),
                "created_at": clock.ts(days, _work_seconds(rng, n)),
                "updated_at": clock.ts(days, _work_seconds(rng, n, 19, 20)),
            }
        )


def _crm_movement(db: _Database, pop: _Population) -> None:
    """Activities, opportunities and tickets over the last two years; a share of the accounts has none."""
    clock, bd = pop.clock, pop.bd
    user_ids = np.array([u["id"] for u in pop.users])
    kinds = np.array(ACTIVITY_KINDS, dtype=object)
    subjects = np.array(ACTIVITY_SUBJECTS, dtype=object)
    stages = np.array(OPPORTUNITY_STAGES, dtype=object)
    ticket_subjects = np.array(TICKET_SUBJECTS, dtype=object)

    def rows_for(rng: np.random.Generator, a: int, b: int, share: float, mean: float) -> np.ndarray:
        count = np.where(rng.random(b - a) < share, 1 + rng.poisson(mean - 1, b - a), 0)
        count[~pop.active[a:b]] = np.minimum(count[~pop.active[a:b]], 1)
        return np.repeat(np.arange(a, b), count)

    def who(rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
        owner = pop.owner[rows]
        other = (owner == 0) | (rng.random(len(rows)) < 0.2)
        owner = np.where(other, user_ids[rng.integers(0, len(user_ids), len(rows))], owner)
        return owner

    def when(rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
        lo = np.maximum(pop.created[rows], bd - 730)
        return lo + (rng.random(len(rows)) * (bd - lo)).astype(np.int64)

    next_id = 1
    with db.table("crm_activity") as t:
        for k, a, b in _chunks(pop.n):
            rng = _rng(pop.seed, "crm_activity", k)
            rows = rows_for(rng, a, b, 0.65, 2.5)
            n = len(rows)
            days, secs = when(rng, rows), _work_seconds(rng, n)
            t.add(
                {
                    "id": next_id + np.arange(n),
                    "account_id": rows + 1,
                    "user_id": who(rng, rows),
                    "kind": kinds[rng.integers(0, len(kinds), n)],
                    "subject": _nullable(subjects[rng.integers(0, len(subjects), n)], rng.random(n) < 0.1),
                    "occurred_at": clock.ts(days, secs),
                    "created_at": clock.ts(days, secs + 600),
                    "updated_at": clock.ts(days, secs + 900),
                }
            )
            next_id += n

    next_id = 1
    with db.table("crm_opportunity") as t:
        for k, a, b in _chunks(pop.n):
            rng = _rng(pop.seed, "crm_opportunity", k)
            rows = rows_for(rng, a, b, 0.2, 1.4)
            n = len(rows)
            days, secs = when(rng, rows), _work_seconds(rng, n)
            stage = _weighted(rng, n, [15, 15, 20, 10, 25, 15])
            closed = stage >= 4
            close_day = np.minimum(days + rng.integers(1, 120, n), bd)
            t.add(
                {
                    "id": next_id + np.arange(n),
                    "account_id": rows + 1,
                    "user_id": who(rng, rows),
                    "title": "Proposta " + _str(rng.integers(1000, 99999, n)),
                    "stage": stages[stage],
                    "value": np.round(rng.lognormal(8.0, 1.2, n), 2),
                    "opened_at": clock.ts(days, secs),
                    "closed_at": clock.ts(close_day, _work_seconds(rng, n), ~closed),
                    "created_at": clock.ts(days, secs),
                    "updated_at": clock.ts(np.where(closed, close_day, days), secs + 3600),
                }
            )
            next_id += n

    next_id = 1
    with db.table("crm_ticket") as t:
        for k, a, b in _chunks(pop.n):
            rng = _rng(pop.seed, "crm_ticket", k)
            rows = rows_for(rng, a, b, 0.15, 1.6)
            n = len(rows)
            days, secs = when(rng, rows), _work_seconds(rng, n)
            close_day = np.minimum(days + rng.integers(0, 20, n), bd)
            status = np.where(bd - days > 30, 2, _weighted(rng, n, [30, 20, 50]))
            t.add(
                {
                    "id": next_id + np.arange(n),
                    "account_id": rows + 1,
                    "user_id": who(rng, rows),
                    "subject": ticket_subjects[rng.integers(0, len(ticket_subjects), n)],
                    "status": np.array(["open", "in_progress", "closed"], dtype=object)[status],
                    "opened_at": clock.ts(days, secs),
                    "closed_at": clock.ts(close_day, secs + 7200, status != 2),
                    "created_at": clock.ts(days, secs),
                    "updated_at": clock.ts(np.where(status == 2, close_day, days), secs + 7200),
                }
            )
            next_id += n


def _crm_audiences(db: _Database, pop: _Population, sp_capital: np.ndarray) -> None:
    rng = _rng(pop.seed, "crm_audience_member")
    vip = np.flatnonzero((pop.class_id >= 3) & pop.active & (rng.random(pop.n) < 0.5))
    sp = np.unique(sp_capital)
    b2b = np.flatnonzero(pop.pj & (pop.erp_code > 0) & pop.active)
    pl = np.flatnonzero((pop.country == PL) & (pop.class_id >= 2) & (rng.random(pop.n) < 0.3))
    members = [(1, vip), (2, sp), (3, b2b), (4, pl)]
    with db.table("crm_audience_member") as t:
        for audience_id, accounts in members:
            for a in range(0, len(accounts), ACCOUNT_CHUNK):
                part = accounts[a : a + ACCOUNT_CHUNK]
                t.add({"audience_id": np.full(len(part), audience_id), "account_id": part + 1})


def _crm_tasks(db: _Database, pop: _Population) -> None:
    clock, bd = pop.clock, pop.bd
    rng = _rng(pop.seed, "crm_task")
    n = max(60, round(pop.n * 0.01))
    with_account = rng.random(n) < 0.85
    account = rng.integers(0, pop.n, n)
    company = np.where(with_account, pop.company[account], _weighted(rng, n, [c[7] for c in COMPANIES]))
    country = np.array([c[6] for c in COMPANIES])[company]
    title = np.empty(n, dtype=object)
    for c in (BR, PL, RO):
        m = country == c
        titles = np.array(TASK_TITLES[c], dtype=object)
        title[m] = titles[rng.integers(0, len(titles), int(m.sum()))]
    user_ids = np.array([u["id"] for u in pop.users if u["active"]])
    operator = np.where(with_account & (pop.owner[account] > 0), pop.owner[account], 0)
    operator = np.where(operator == 0, user_ids[rng.integers(0, len(user_ids), n)], operator)
    # When: 40% in the next three days (reminders to send), the rest spread around the business date.
    bucket = _weighted(rng, n, [40, 30, 30])
    offset_min = np.select(
        [bucket == 0, bucket == 1], [rng.integers(0, 3 * 1440, n), -rng.integers(60, 60 * 1440, n)],
        rng.integers(3 * 1440, 60 * 1440, n),
    )  # fmt: skip
    start_min = (offset_min // 15) * 15 + 8 * 60
    day, minute = bd + start_min // 1440, start_min % 1440
    minute = np.clip(minute, 7 * 60, 20 * 60)
    status = np.where(bucket == 1, _weighted(rng, n, [25, 60, 15]), _weighted(rng, n, [90, 3, 7]))
    recipients = np.where(with_account, _weighted(rng, n, [50, 30, 20]), 1)
    freq_idx = _weighted(rng, n, [75, 3, 15, 7])  # none, daily, weekly, monthly
    recurring = freq_idx > 0
    until_set = recurring & (rng.random(n) < 0.6)
    count_set = recurring & ~until_set & (rng.random(n) < 0.5)
    channels = np.array(["email", "sms"], dtype=object)
    offsets = np.array([15, 30, 60, 120, 1440])

    def side(name: str) -> dict[str, Any]:
        unset = rng.random(n) < 0.5
        return {
            f"{name}_channel": _nullable(channels[rng.integers(0, 2, n)], unset),
            f"{name}_offset_minutes": _nullable(offsets[rng.integers(0, len(offsets), n)], rng.random(n) < 0.5),
            f"{name}_template": _nullable(
                np.full(n, "task_reminder" if name == "customer" else "task_reminder_operator", dtype=object),
                rng.random(n) < 0.6,
            ),
        }

    created = np.minimum(day - rng.integers(1, 60, n), bd - 1)
    db.insert(
        "crm_task",
        {
            "id": np.arange(1, n + 1),
            "company_id": company + 1,
            "account_id": _nullable(account + 1, ~with_account),
            "operator_id": operator,
            "title": title,
            "description": _nullable(np.full(n, "Confirmar horário com o cliente.", dtype=object), rng.random(n) < 0.5),
            "starts_at": clock.ts(day, minute * 60),
            "status": np.array(["open", "completed", "cancelled"], dtype=object)[status],
            "recipients": np.array(["customers", "operators", "both"], dtype=object)[recipients],
            **side("customer"),
            **side("operator"),
            "recurrence_freq": _nullable(
                np.array([None, "daily", "weekly", "monthly"], dtype=object)[freq_idx], ~recurring
            ),
            "recurrence_interval": np.where(recurring & (rng.random(n) < 0.2), 2, 1),
            "recurrence_until": clock.ts(day + rng.integers(30, 366, n), minute * 60, ~until_set),
            "recurrence_count": _nullable(rng.integers(3, 13, n), ~count_set),
            "created_at": clock.ts(created, _work_seconds(rng, n)),
            "updated_at": clock.ts(np.where(status > 0, np.minimum(day, bd - 1), created), _work_seconds(rng, n)),
        },
    )


def _crm_external_ids(db: _Database, pop: _Population) -> None:
    clock, bd = pop.clock, pop.bd
    rng = _rng(pop.seed, "crm_external_id")
    with_mobile = np.flatnonzero(np.not_equal(pop.mobile, None) & pop.active)
    k = min(len(with_mobile), max(5, len(with_mobile) // 200))
    rows = np.sort(rng.choice(with_mobile, k, replace=False))
    phone = pop.mobile[rows].copy()
    changed = rng.random(k) < 0.1  # the contact was sent with a number the account no longer has
    changed[:1] = True
    phone[changed] = _mobiles(rng, pop.country[rows][changed])
    hex_digits = np.array(list("0123456789abcdef"), dtype=object)
    ext = np.array(["".join(row) for row in hex_digits[rng.integers(0, 16, (k, 24))]], dtype=object)
    db.insert(
        "crm_external_id",
        {
            "account_id": rows + 1,
            "system": np.full(k, "rd_conversas", dtype=object),
            "external_id": ext,
            "phone_number": phone,
            "synced_at": clock.ts(bd - rng.integers(1, 200, k), _work_seconds(rng, k, 2, 5)),
        },
    )


def _write_crm(path: Path, pop: _Population, log: Log) -> dict[str, int]:
    from crm.db.crm_schema import metadata

    db = _Database(path, metadata, log)
    _crm_reference(db, pop)
    _crm_accounts(db, pop)
    contacts = _crm_contacts(db, pop)
    _crm_phones(db, pop, contacts)
    sp_capital = _crm_addresses(db, pop)
    _crm_observations(db, pop)
    _crm_movement(db, pop)
    _crm_audiences(db, pop, sp_capital)
    _crm_tasks(db, pop)
    _crm_external_ids(db, pop)
    return db.finish()


# --------------------------------------------------------------------------------------------------
# ERP
# --------------------------------------------------------------------------------------------------


def _erp_reference(db: _Database, pop: _Population) -> None:
    rng = _rng(pop.seed, "erp_reference")
    db.insert("customer_group", {"id": range(1, len(GROUPS) + 1), "name": GROUPS})
    reps = _people(rng, np.array([BR] * 10 + [PL] * 3 + [RO] * 3), rng.random(16) < 0.4)
    db.insert(
        "representative",
        {
            "id": range(1, 17),
            "name": reps.name,
            "email": _nullable(
                reps.slug + "@" + np.array(DOMAIN, dtype=object)[[BR] * 10 + [PL] * 3 + [RO] * 3], np.arange(16) == 7
            ),
        },
    )
    db.insert("carrier", {"id": range(1, len(CARRIERS) + 1), "name": CARRIERS})
    db.insert("bearer", {"id": range(1, len(BEARERS) + 1), "name": [b[0] for b in BEARERS],
                         "bank_code": [b[1] for b in BEARERS]})  # fmt: skip
    db.insert(
        "payment_condition",
        {
            "id": range(1, len(PAYMENT_CONDITIONS) + 1),
            "name": [p[0] for p in PAYMENT_CONDITIONS],
            "installments": [p[1] for p in PAYMENT_CONDITIONS],
            "days_between": [p[2] for p in PAYMENT_CONDITIONS],
        },
    )


@dataclass
class _ErpCustomers:
    payment_method: np.ndarray  # index into PAYMENT_METHODS
    condition: np.ndarray  # payment condition id


def _erp_customers(db: _Database, pop: _Population) -> _ErpCustomers:
    clock, bd = pop.clock, pop.bd
    m = len(pop.cust_account)
    rng = _rng(pop.seed, "customer")
    linked = pop.cust_account >= 0
    acc = np.maximum(pop.cust_account, 0)
    country = np.array([c[6] for c in COMPANIES])[pop.cust_company]
    only = np.flatnonzero(~linked)
    persons = _people(rng, country[only], rng.random(len(only)) < 0.5)
    firms = _companies_names(rng, country[only])
    pj_only = pop.cust_pj[only]

    name = np.where(linked, pop.name[acc], None)
    short = np.where(linked, pop.short_name[acc], None)
    tax = np.where(linked, pop.tax_id[acc], None)
    email = np.where(linked, pop.email[acc], None)
    mobile = np.where(linked, pop.mobile[acc], None)
    name[only] = np.where(pj_only, firms.name, persons.name)
    short[only] = np.where(pj_only, firms.first, persons.first)
    slug = np.where(pj_only, firms.slug, persons.slug)
    email[only] = _nullable(
        slug + ".erp" + _str(only + CODE_BASE) + "@" + np.array(DOMAIN, dtype=object)[country[only]],
        rng.random(len(only)) < 0.3,
    )
    mobile[only] = _nullable(_mobiles(rng, country[only]), rng.random(len(only)) < 0.4)
    br_only = country[only] == BR
    index = pop.n + only  # distinct from the account indexes: no tax-id collision with CRM accounts
    tax_only = np.empty(len(only), dtype=object)
    m_pf, m_pj = br_only & ~pj_only, br_only & pj_only
    tax_only[m_pf] = _cpf(_unique(pop.seed, "cpf", index[m_pf], 100_000_000, 899_999_999))
    tax_only[m_pj] = _cnpj(_unique(pop.seed, "cnpj", index[m_pj], 10_000_000, 89_999_999), np.ones(int(m_pj.sum())))
    tax[only] = tax_only

    method = np.where(pop.cust_pj, _weighted(rng, m, [80, 0, 20]), _weighted(rng, m, [50, 35, 15]))
    condition = np.where(
        method == 1,
        np.array(CARNE_CONDITIONS)[rng.integers(0, 2, m)],
        np.where(method == 2, _weighted(rng, m, [40, 20, 20, 10, 10, 0, 0, 0]) + 1,
                 _weighted(rng, m, [0, 40, 20, 20, 20, 0, 0, 0]) + 1),
    )  # fmt: skip
    condition[country == PL] = np.where(method[country == PL] == 2, 1, 8)
    group = np.where(pop.cust_pj, _weighted(rng, m, [0, 40, 30, 5, 25, 0, 0]), 0) + 1
    group[country == PL] = 6
    group[country == RO] = 7
    updated = np.minimum(pop.cust_created + rng.integers(0, 3000, m), bd - 1)
    recent = rng.random(m) < 0.01  # a few customers changed in the last days
    updated[recent] = bd - rng.integers(0, 5, int(recent.sum()))
    codes = np.arange(CODE_BASE, CODE_BASE + m)
    with db.table("customer") as t:
        for _, a, b in _chunks(m):
            s = slice(a, b)
            t.add(
                {
                    "code": codes[s],
                    "company_code": np.array([c[0] for c in COMPANIES], dtype=object)[pop.cust_company[s]],
                    "name": name[s],
                    "short_name": short[s],
                    "tax_id": tax[s],
                    "person_type": np.where(pop.cust_pj[s], "PJ", "PF").astype(object),
                    "email": email[s],
                    "mobile_phone": mobile[s],
                    "group_id": _nullable(group[s], rng.random(b - a) < 0.1),
                    "representative_id": _nullable(rng.integers(1, 17, b - a), rng.random(b - a) < 0.2),
                    "carrier_id": _nullable(rng.integers(1, len(CARRIERS) + 1, b - a), rng.random(b - a) < 0.3),
                    "payment_condition_id": condition[s],
                    "created_at": clock.ts(pop.cust_created[s], _work_seconds(rng, b - a)),
                    "updated_at": clock.ts(updated[s], _work_seconds(rng, b - a)),
                }
            )
    with db.table("credit_info") as t:
        rng = _rng(pop.seed, "credit_info")
        for _, a, b in _chunks(m):
            k = b - a
            t.add(
                {
                    "customer_code": codes[a:b],
                    "credit_limit": _nullable(
                        np.round(pop.cust_value[a:b] * rng.uniform(5, 40, k), -2), rng.random(k) < 0.1
                    ),
                    "months_inactive": _nullable(
                        np.array([3, 6, 12, 18, 24])[_weighted(rng, k, [5, 30, 40, 15, 10])], rng.random(k) < 0.2
                    ),
                    "updated_at": clock.ts(bd - rng.integers(1, 365, k), _work_seconds(rng, k, 1, 5)),
                }
            )
    return _ErpCustomers(method, condition)


def _invoice_windows(pop: _Population) -> list[tuple[int, int]]:
    """Issue-date windows [a, b) of about INVOICE_CHUNK expected invoices each."""
    bd = pop.bd
    has = pop.cust_invoices > 0
    if not has.any():
        return []
    s, e = pop.cust_start[has], pop.cust_end[has]
    lo = int(s.min())
    length = bd - lo + 2
    rate = pop.cust_invoices[has] / (e - s + 1)
    diff = np.bincount(s - lo, rate, length + 1) - np.bincount(e - lo + 1, rate, length + 1)
    cumulative = np.cumsum(np.cumsum(diff)[:length])
    total = cumulative[-1]
    k = max(1, int(np.ceil(total / INVOICE_CHUNK)))
    cuts = np.searchsorted(cumulative, total * np.arange(1, k) / k) + lo + 1
    bounds = sorted({lo, *cuts.tolist(), bd + 1})
    return list(itertools.pairwise(bounds))


def _erp_invoices(db: _Database, pop: _Population, log: Log) -> dict[str, np.ndarray]:
    """Invoices window by window; returns the recent ones (receivables) and a 1% sample (items)."""
    clock, bd = pop.clock, pop.bd
    m = len(pop.cust_account)
    remaining_n = pop.cust_invoices.copy()
    remaining_frac = np.ones(m)
    length = (pop.cust_end - pop.cust_start + 1).astype(float)
    company_codes = np.array([c[0] for c in COMPANIES], dtype=object)
    series_names = np.array(["1", "2"], dtype=object)
    counters = np.zeros(len(COMPANIES) * 2, dtype=np.int64)
    next_id = 1
    recent: dict[str, list[np.ndarray]] = {k: [] for k in ("id", "cust", "day", "total", "number", "items_id")}
    recent["items_total"] = []
    with db.table("invoice") as t:
        for k, (wa, wb) in enumerate(_invoice_windows(pop)):
            started = time.perf_counter()
            rng = _rng(pop.seed, "invoice", k)
            lo = np.maximum(pop.cust_start, wa)
            overlap = np.maximum(0, np.minimum(pop.cust_end + 1, wb) - lo)
            frac = overlap / length
            p = np.where(remaining_frac > 1e-12, frac / np.maximum(remaining_frac, 1e-12), 1.0)
            p = np.where(pop.cust_end < wb, 1.0, np.clip(p, 0.0, 1.0))
            p[overlap == 0] = 0.0
            x = rng.binomial(remaining_n, p)
            remaining_n -= x
            remaining_frac -= frac
            cust = np.repeat(np.arange(m), x)
            day = lo[cust] + (rng.random(len(cust)) * overlap[cust]).astype(np.int64)
            # Same-day invoices for the same customer: ~1% extra, at least two per window.
            twins = rng.integers(0, len(cust), max(2, len(cust) // 100)) if len(cust) else np.array([], np.int64)
            cust, day = np.concatenate([cust, cust[twins]]), np.concatenate([day, day[twins]])
            n = len(cust)
            entered = day + rng.exponential(0.35, n)  # entry order: mostly, not strictly, the issue order
            order = np.argsort(entered, kind="stable")
            cust, day = cust[order], day[order]
            ids = next_id + np.arange(n)
            next_id += n
            company = pop.cust_company[cust]
            series = (rng.random(n) < 0.15).astype(np.int64)
            group = company * 2 + series
            by_group = np.argsort(group, kind="stable")
            sorted_group = group[by_group]
            first = np.searchsorted(sorted_group, sorted_group)
            seq = np.empty(n, dtype=np.int64)
            seq[by_group] = counters[sorted_group] + np.arange(n) - first + 1
            counters += np.bincount(group, minlength=len(counters))
            # '1000012345': the series followed by the zero-padded sequence (SQLite stores the int as text).
            number = (series + 1) * 1_000_000_000 + seq
            total = np.maximum(np.round(pop.cust_value[cust] * rng.lognormal(0.0, 0.8, n), 2), 1.0)
            cancelled = rng.random(n) < 0.02
            if k == 0 and n:
                cancelled[0] = True
            lag = np.where(cancelled, rng.integers(0, 8, n), np.where(rng.random(n) < 0.8, 0, rng.integers(1, 6, n)))
            updated = np.minimum(day + lag, bd)
            touched = rng.random(n) < 0.002  # a few old invoices edited in the last days
            updated[touched] = np.maximum(day[touched], bd - rng.integers(0, 4, int(touched.sum())))
            secs = _work_seconds(rng, n, 7, 21)
            t.add(
                {
                    "id": ids,
                    "customer_code": cust + CODE_BASE,
                    "company_code": company_codes[company],
                    "series": series_names[series],
                    "number": number,
                    "issue_date": clock.date(day),
                    "total_value": total,
                    "cancelled": cancelled,
                    "updated_at": clock.ts(updated, secs),
                }
            )
            keep = (day >= bd - 120) & ~cancelled
            for key, values in (("id", ids), ("cust", cust), ("day", day), ("total", total), ("number", number)):
                recent[key].append(values[keep])
            sample = rng.random(n) < 0.01
            recent["items_id"].append(ids[sample])
            recent["items_total"].append(total[sample])
            log(f"{db.name:7}   invoice window {clock.day_o[wa - clock.lo]}..{clock.day_o[wb - 1 - clock.lo]}"
                f" {n:>10,} rows {time.perf_counter() - started:6.1f}s")  # fmt: skip
    return {k: np.concatenate(v) if v else np.array([]) for k, v in recent.items()}


def _erp_invoice_items(db: _Database, pop: _Population, sample: dict[str, np.ndarray]) -> None:
    rng = _rng(pop.seed, "invoice_item")
    ids, totals = sample["items_id"].astype(np.int64), sample["items_total"]
    lines = rng.integers(1, 5, len(ids))
    invoice = np.repeat(ids, lines)
    line = np.arange(len(invoice)) - np.repeat(np.cumsum(lines) - lines, lines) + 1
    quantity = rng.integers(1, 13, len(invoice)).astype(float)
    unit = np.maximum(np.round(np.repeat(totals / lines, lines) / quantity, 2), 0.01)
    db.insert(
        "invoice_item",
        {
            "invoice_id": invoice,
            "line": line,
            "product_code": "SKU-" + _zfill(rng.integers(1, 800, len(invoice)), 5),
            "quantity": quantity,
            "unit_price": unit,
        },
    )


def _erp_receivables(db: _Database, pop: _Population, customers: _ErpCustomers, recent: dict[str, np.ndarray]) -> None:
    """Installments of the invoices of the last 120 days, plus explicit overdue bills (edge cases)."""
    clock, bd = pop.clock, pop.bd
    rng = _rng(pop.seed, "receivable")
    installments = np.array([p[1] for p in PAYMENT_CONDITIONS])
    spacing = np.array([p[2] for p in PAYMENT_CONDITIONS])
    cust = recent["cust"].astype(np.int64)
    condition = customers.condition[cust] - 1
    count = installments[condition]
    rows = np.repeat(np.arange(len(cust)), count)
    k = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count) + 1
    c = cust[rows]
    issue = recent["day"].astype(np.int64)[rows]
    due = issue + spacing[condition[rows]] * k
    amount = np.round(recent["total"][rows] / count[rows], 2)
    method = customers.payment_method[c]
    invoice_id = recent["id"].astype(np.int64)[rows]
    document = _str(recent["number"].astype(np.int64)[rows]) + "/" + _str(k)

    # Explicit bills: inactive PJ partners with overdue receivables, and every (method x overdue/due) combination.
    partners = pop.partners_overdue
    p_count = rng.integers(1, 4, len(partners))
    p_cust = np.repeat(partners, p_count)
    p_due = bd - rng.integers(1, 61, len(p_cust))
    edge_cust = np.flatnonzero(pop.cust_invoices > 0)[:4]
    if len(edge_cust) < 4:
        edge_cust = np.arange(min(4, len(pop.cust_account)))
    e_cust = np.repeat(edge_cust, 4)[:16]
    e_method = np.tile([0, 0, 1, 1], 4)[: len(e_cust)]
    e_due = bd + np.tile([-7, 3, -15, 5], 4)[: len(e_cust)]
    x_cust = np.concatenate([p_cust, e_cust]).astype(np.int64)
    x_due = np.concatenate([p_due, e_due])
    x_method = np.concatenate([np.zeros(len(p_cust), dtype=np.int64), e_method])
    x_issue = x_due - 30
    nx = len(x_cust)

    c = np.concatenate([c, x_cust])
    issue, due = np.concatenate([issue, x_issue]), np.concatenate([due, x_due])
    amount = np.concatenate([amount, np.round(pop.cust_value[x_cust] * rng.lognormal(0, 0.5, nx), 2)])
    method = np.concatenate([method, x_method])
    invoice_id = _nullable(np.concatenate([invoice_id, np.zeros(nx, dtype=np.int64)]),
                           np.r_[np.zeros(len(rows), bool), np.ones(nx, bool)])  # fmt: skip
    document = np.concatenate([document, "DP-" + _str(x_cust + CODE_BASE) + "-" + _str(np.arange(1, nx + 1))])
    forced_open = np.r_[np.zeros(len(rows), bool), np.ones(nx, bool)]
    n = len(c)

    # Status by due date: older than 60 days paid (or cancelled); the last 60 days a mix; future mostly open.
    r = rng.random(n)
    status = np.select(
        [due < bd - 60, due < bd],
        [np.where(r < 0.985, 2, 3), np.select([r < 0.6, r < 0.92], [2, 0], 1)],
        np.select([r < 0.08, r < 0.98], [2, 0], 1),
    )
    status[forced_open] = 0
    paid = status == 2
    paid_day = np.clip(due + rng.integers(-5, 11, n), issue, bd)
    paid_day = np.where(paid_day == bd, bd - 1, paid_day)
    paid_secs = _work_seconds(rng, n, 6, 22)
    bearer = np.where(method == 0, rng.integers(1, 6, n), PIX_BEARER)
    order = np.lexsort((due, c))  # a customer's bills together, by due date
    db.insert(
        "receivable",
        {
            "id": np.arange(1, n + 1),
            "customer_code": (c + CODE_BASE)[order],
            "company_code": np.array([x[0] for x in COMPANIES], dtype=object)[pop.cust_company[c]][order],
            "document_number": document[order],
            "invoice_id": invoice_id[order],
            "issue_date": clock.date(issue)[order],
            "due_date": clock.date(due)[order],
            "amount": amount[order],
            "paid_amount": np.where(paid, amount, 0.0)[order],
            "paid": paid[order],
            "paid_at": clock.ts(paid_day, paid_secs, ~paid)[order],
            "payment_method": np.array(PAYMENT_METHODS, dtype=object)[method][order],
            "status": np.array(["open", "in_progress", "paid", "cancelled"], dtype=object)[status][order],
            "bearer_id": _nullable(bearer, method == 2)[order],
            "updated_at": clock.ts(np.where(paid, paid_day, np.minimum(issue, bd)), paid_secs)[order],
        },
    )


def _erp_quotes(db: _Database, pop: _Population) -> None:
    clock, bd = pop.clock, pop.bd
    m = len(pop.cust_account)
    next_id = 1
    with db.table("quote") as t:
        for k, a, b in _chunks(m):
            rng = _rng(pop.seed, "quote", k)
            count = np.where(rng.random(b - a) < 0.3, 1 + rng.geometric(0.5, b - a) - 1, 0)
            cust = np.repeat(np.arange(a, b), count)
            n = len(cust)
            lo = np.maximum(pop.cust_created[cust], bd - 3 * 365)
            day = lo + (rng.random(n) * (bd - lo)).astype(np.int64)
            status = np.where(
                bd - day > 60, _weighted(rng, n, [0, 20, 25, 30, 25]), _weighted(rng, n, [70, 15, 10, 0, 5])
            )
            t.add(
                {
                    "id": next_id + np.arange(n),
                    "customer_code": cust + CODE_BASE,
                    "quote_date": clock.date(day),
                    "total_value": np.round(pop.cust_value[cust] * rng.lognormal(0.2, 0.7, n), 2),
                    "status": np.array(QUOTE_STATUSES, dtype=object)[status],
                    "updated_at": clock.ts(np.minimum(day + rng.integers(0, 20, n), bd), _work_seconds(rng, n)),
                }
            )
            next_id += n


def _erp_orders(db: _Database, pop: _Population) -> None:
    """Sales orders of the last ten days and the stage events they went through up to the business date."""
    clock, bd = pop.clock, pop.bd
    rng = _rng(pop.seed, "sales_order")
    buyers = np.flatnonzero(pop.cust_end >= bd - 365)
    if not len(buyers):
        buyers = np.arange(len(pop.cust_account))
    n = max(30, round(pop.n * 0.03))
    cust = np.sort(rng.choice(buyers, n))
    created = (bd - 10) * 86_400 + rng.integers(0, 11 * 86_400, n)
    created = np.sort(created)
    channel = np.where(pop.cust_pj[cust] & (rng.random(n) < 0.5), 3, _weighted(rng, n, [20, 30, 50, 0]))
    order = rng.permutation(n)  # orders of different customers interleave in time
    cust = cust[order]
    now = (bd + 1) * 86_400 - 1
    # Stage times: created -> invoiced -> shipped -> delivered, each after a random delay; the future is cut.
    delays = np.column_stack(
        [
            np.zeros(n),
            rng.exponential(0.8, n) * 86_400,
            rng.exponential(1.2, n) * 86_400,
            rng.exponential(2, n) * 86_400,
        ]
    ).astype(np.int64)
    times = created[:, None] + np.cumsum(delays, axis=1)
    cancelled = rng.random(n) < 0.04
    happened = times <= now
    happened[cancelled, 1:] = False
    last = np.where(happened, times, 0).max(axis=1)
    total = np.round(pop.cust_value[cust] * rng.lognormal(0, 0.6, n), 2)
    db.insert(
        "sales_order",
        {
            "id": np.arange(1, n + 1),
            "customer_code": cust + CODE_BASE,
            "company_code": np.array([c[0] for c in COMPANIES], dtype=object)[pop.cust_company[cust]],
            "order_number": "PV" + _str(500_000 + np.arange(1, n + 1)),
            "channel": np.array(ORDER_CHANNELS, dtype=object)[channel],
            "total_value": total,
            "created_at": clock.ts(created // 86_400, created % 86_400),
            "updated_at": clock.ts(last // 86_400, last % 86_400),
        },
    )
    order_id = np.repeat(np.arange(1, n + 1), happened.sum(axis=1))
    stage_idx = np.nonzero(happened)[1]
    when = times[happened]
    cancel_time = created[cancelled] + rng.integers(3600, 2 * 86_400, int(cancelled.sum()))
    cancel_time = np.minimum(cancel_time, now)
    stages = np.array([*ORDER_STAGES, "cancelled"], dtype=object)
    order_id = np.concatenate([order_id, np.flatnonzero(cancelled) + 1])
    stage_idx = np.concatenate([stage_idx, np.full(int(cancelled.sum()), len(ORDER_STAGES))])
    when = np.concatenate([when, cancel_time])
    seq = np.lexsort((stage_idx, when))
    db.insert(
        "order_stage_event",
        {
            "id": np.arange(1, len(seq) + 1),
            "order_id": order_id[seq],
            "stage": stages[stage_idx[seq]],
            "occurred_at": clock.ts(when[seq] // 86_400, when[seq] % 86_400),
        },
    )


def _write_erp(path: Path, pop: _Population, log: Log) -> dict[str, int]:
    from crm.db.erp_schema import metadata

    db = _Database(path, metadata, log)
    _erp_reference(db, pop)
    customers = _erp_customers(db, pop)
    recent = _erp_invoices(db, pop, log)
    _erp_invoice_items(db, pop, recent)
    _erp_receivables(db, pop, customers, recent)
    del recent
    _erp_quotes(db, pop)
    _erp_orders(db, pop)
    return db.finish()


# --------------------------------------------------------------------------------------------------
# GP (health plan)
# --------------------------------------------------------------------------------------------------


def _write_gp(path: Path, pop: _Population, log: Log) -> dict[str, int]:
    from crm.db.gp_schema import metadata

    clock, bd = pop.clock, pop.bd
    db = _Database(path, metadata, log)
    rng = _rng(pop.seed, "contract")
    nc = pop.n_contracts
    statuses = np.array(["active", "suspended", "cancelled"], dtype=object)
    status = _weighted(rng, nc, [80, 10, 10])
    start = bd - rng.integers(30, 15 * 365, nc)
    end = np.minimum(start + rng.integers(30, 3000, nc), bd - 1)
    db.insert(
        "contract",
        {
            "id": np.arange(1, nc + 1),
            "number": "GP-" + _zfill(np.arange(1, nc + 1), 7),
            "status": statuses[status],
            "start_date": clock.date(start),
            "end_date": clock.date(end, status != 2),
        },
    )
    rng = _rng(pop.seed, "beneficiary")
    members = np.flatnonzero(pop.gp_contract >= 0)
    missing = rng.random(len(members)) < 0.01  # a few CRM codes the GP does not know (not integrated)
    if len(members) > 20:
        missing[0] = True
    members = members[~missing]
    contract = pop.gp_contract[members]
    own_status = np.where(rng.random(len(members)) < 0.05, 2, status[contract])
    # Dependants: beneficiaries of the same contracts that are not CRM accounts.
    nd = len(members) // 5
    dep_contract = np.sort(rng.integers(0, max(nc, 1), nd)) if nc else np.zeros(0, dtype=np.int64)
    dep_people = _people(rng, np.full(nd, BR), rng.random(nd) < 0.5)
    dep_seq = 50 + np.arange(nd) - np.searchsorted(dep_contract, dep_contract)
    dep_tax = _nullable(_cpf(_unique(pop.seed, "cpf", 3 * pop.n + np.arange(nd), 100_000_000, 899_999_999)),
                        rng.random(nd) < 0.5)  # fmt: skip
    db.insert(
        "beneficiary",
        {
            "code": np.concatenate([pop.gp_code[members], "0001" + _zfill(dep_contract + 1, 7) + _zfill(dep_seq, 2)]),
            "contract_id": np.concatenate([contract, dep_contract]) + 1,
            "name": np.concatenate([pop.name[members], dep_people.name]),
            "tax_id": np.concatenate([pop.tax_id[members], dep_tax]),
            "status": statuses[np.concatenate([own_status, status[dep_contract]])],
        },
    )
    return db.finish()


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def _erp_child(path: Path, pop: _Population, log: Log, conn: Any) -> None:
    try:
        conn.send(("ok", _write_erp(path, pop, log)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _print(message: str) -> None:
    print(message, flush=True)


def generate(
    out_dir: Path,
    accounts: int,
    seed: int = 42,
    invoices_per_account: float = 10.0,
    business_date: dt.date = BUSINESS_DATE,
    *,
    parallel: bool | None = None,
    log: Log | None = _print,
) -> dict[str, int]:
    """Write out_dir/crm.db, erp.db and gp.db (replacing them); return the row count of every table.

    Same arguments, same data: every value derives from ``seed`` and ``business_date``.
    ``parallel`` (default: from PARALLEL_FROM accounts on a multi-core machine) writes erp.db in a
    forked process; the content does not depend on it.
    """
    if accounts < 1:
        raise ValueError("accounts must be >= 1")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    if invoices_per_account < 0:
        raise ValueError("invoices_per_account must be >= 0")
    log = log or (lambda _message: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pop = _population(seed, accounts, float(invoices_per_account), business_date)
    log(f"population: {accounts:,} accounts, {len(pop.cust_account):,} ERP customers, "
        f"{int(pop.cust_invoices.sum()):,} planned invoices {time.perf_counter() - started:8.1f}s")  # fmt: skip
    if parallel is None:
        parallel = accounts >= PARALLEL_FROM and (os.cpu_count() or 1) > 1
    # fork only: the child inherits the population instead of pickling it; daemonic processes may not fork.
    parallel = parallel and "fork" in multiprocessing.get_all_start_methods()
    parallel = parallel and not multiprocessing.current_process().daemon
    counts: dict[str, int] = {}
    if parallel:
        ctx = multiprocessing.get_context("fork")
        receiver, sender = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_erp_child, args=(out_dir / "erp.db", pop, log, sender), name="crm-demo-erp")
        child.start()
        sender.close()
        try:
            counts |= _write_crm(out_dir / "crm.db", pop, log)
            counts |= _write_gp(out_dir / "gp.db", pop, log)
            try:
                outcome, payload = receiver.recv()
            except EOFError:
                outcome, payload = "error", f"the ERP process died (exit code {child.join() or child.exitcode})"
        finally:
            child.join()
        if outcome != "ok":
            raise RuntimeError(f"writing erp.db failed:\n{payload}")
        counts |= payload
    else:
        counts |= _write_crm(out_dir / "crm.db", pop, log)
        counts |= _write_erp(out_dir / "erp.db", pop, log)
        counts |= _write_gp(out_dir / "gp.db", pop, log)
    log(f"done in {time.perf_counter() - started:.1f}s: {sum(counts.values()):,} rows in {out_dir}")
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m crm.demo seed``."""
    from crm.config import VAR_DIR

    parser.add_argument("--accounts", type=int, default=5000, help="CRM accounts to generate (default %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="random seed: same seed, same data (default %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=VAR_DIR, help="directory of crm.db, erp.db, gp.db (default %(default)s)"
    )
    parser.add_argument(
        "--invoices-per-account", type=float, default=10.0, help="mean ERP invoices per account (default %(default)s)"
    )
    parser.add_argument(
        "--business-date",
        type=dt.date.fromisoformat,
        default=BUSINESS_DATE,
        help="the 'today' of the data, YYYY-MM-DD (default %(default)s)",
    )
    parser.add_argument("--serial", action="store_true", help="write the three databases in this process only")


def main(args: argparse.Namespace) -> None:
    """Run ``generate`` from parsed command-line options."""
    generate(
        Path(args.out),
        args.accounts,
        seed=args.seed,
        invoices_per_account=args.invoices_per_account,
        business_date=args.business_date,
        parallel=False if args.serial else None,
    )


# Guarded by the package name too: Airflow's plugin loader execs .py files under plugins/ as top-level modules.
if __name__ == "__main__" and __package__ == "crm.demo":
    _parser = argparse.ArgumentParser(prog="python -m crm.demo.generate", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    main(_parser.parse_args())
    sys.exit(0)
